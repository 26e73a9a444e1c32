"""Where tuning records live, and which of them a compile may use.

One MetaSchedule JSON database per target, in a folder named after the target and a hash of the
CPU features it implies: records tuned on an AVX-512 Xeon sit in another folder than records
tuned on an AVX2-only EPYC, so they are never applied to the other CPU.

A database may come from someone else (records shared for a board): before TVM's JSON reader sees
its files, each must be a plain file (no symlink) under the size cap whose every line has the shape
TVM writes, so a malformed or oversized file is a clear ArtifactError naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target.codegen import llvm_get_cpu_features

from kiln.errors import ArtifactError

WORKLOADS_FILE = "database_workload.json"
RECORDS_FILE = "database_tuning_record.json"
STATE_FILE = "kiln_progress.json"  # Kiln's own: trials run and default latency per task
MAX_DATABASE_FILE_BYTES = 256 << 20


def default_root() -> Path:
    if os.environ.get("KILN_TUNING_DIR"):
        return Path(os.environ["KILN_TUNING_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln" / "tuning"


def target_key(target: tvm.target.Target) -> str:
    features = sorted(llvm_get_cpu_features(target)) if target.kind.name == "llvm" else []
    identity = json.dumps({"target": str(target), "features": features}, sort_keys=True)
    name = str(target.attrs.get("mcpu", "") or target.kind.name)
    return f"{target.kind.name}-{name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


class TuningDatabase:
    def __init__(self, path: Path, target: tvm.target.Target) -> None:
        self.path = path
        self.target = target

    @classmethod
    def for_target(cls, root: Path | None, target: tvm.target.Target) -> "TuningDatabase":
        return cls(Path(root or default_root()) / target_key(target), target)

    def exists(self) -> bool:
        return (self.path / RECORDS_FILE).is_file()

    def open(self) -> ms.database.JSONDatabase:
        self.path.mkdir(parents=True, exist_ok=True)
        self.check()
        (self.path / "target.json").write_text(json.dumps({"target": str(self.target)}, indent=1))
        return ms.database.JSONDatabase(work_dir=str(self.path), module_equality="structural")

    def check(self) -> None:
        """Refuse files TVM should not parse: symlinks, oversized files, lines of the wrong shape."""
        workloads = _checked_lines(self.path / WORKLOADS_FILE, _is_workload)
        _checked_lines(self.path / RECORDS_FILE, lambda line: _is_record(line, workloads))

    def progress(self) -> dict:
        """Kiln's tuning progress per task (what a resumed run skips); {} before the first run."""
        path = self.path / STATE_FILE
        if not _checked_file(path):
            return {}
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ArtifactError(f"{path}: not Kiln's tuning progress ({error}); delete it to start afresh") from error
        if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
            raise ArtifactError(f"{path}: not Kiln's tuning progress (expected task name -> record); delete it to start afresh")
        return state

    def others(self) -> list[str]:
        """Databases in the same root tuned for other targets or CPUs."""
        root = self.path.parent
        return sorted(p.name for p in root.iterdir() if p.is_dir() and p != self.path) if root.is_dir() else []

    def apply_pass(self) -> tvm.transform.Pass:
        """Relax pass: every function with a record gets the best schedule the database holds."""
        database = self.open()

        @tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
        def apply(mod: tvm.IRModule, _context) -> tvm.IRModule:
            with database:
                return tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)

        return apply


def _checked_file(path: Path) -> bool:
    """Whether the file exists, after checking it is a plain file under the size cap."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ArtifactError(f"{path}: the tuning database file is a symlink or not a plain file; refused")
    if not path.exists():
        return False
    if path.stat().st_size > MAX_DATABASE_FILE_BYTES:
        raise ArtifactError(f"{path}: {path.stat().st_size:,} bytes, over the {MAX_DATABASE_FILE_BYTES >> 20} MiB cap "
                            f"on a tuning database file; refused")
    return True


def _checked_lines(path: Path, valid) -> int:
    """How many lines the file has, after checking each (a missing file has none)."""
    if not _checked_file(path):
        return 0
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ArtifactError(f"{path}:{number}: not a JSON line ({error}); refused") from error
            if not valid(line):
                raise ArtifactError(f"{path}:{number}: not a MetaSchedule {'workload' if path.name == WORKLOADS_FILE else 'record'} line; refused")
            count += 1
    return count


def _is_workload(line) -> bool:
    """[structural hash, base64 of the IRModule's JSON]"""
    return isinstance(line, list) and len(line) == 2 and all(isinstance(part, str) for part in line)


def _is_record(line, workloads: int) -> bool:
    """[workload index, [trace, run seconds, target, argument info]]"""
    return (isinstance(line, list) and len(line) == 2 and isinstance(line[0], int) and 0 <= line[0] < workloads
            and isinstance(line[1], list) and len(line[1]) == 4 and isinstance(line[1][0], list))
