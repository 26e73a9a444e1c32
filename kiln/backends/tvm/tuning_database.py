"""Where tuning records live, and which of them a compile may use.

One MetaSchedule JSON database per target, in a folder named after the target and a hash of the
CPU features it implies: records tuned on an AVX-512 Xeon sit in another folder than records
tuned on an AVX2-only EPYC, so they are never applied to the other CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target.codegen import llvm_get_cpu_features


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
        return (self.path / "database_tuning_record.json").is_file()

    def open(self) -> ms.database.JSONDatabase:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "target.json").write_text(json.dumps({"target": str(self.target)}, indent=1))
        return ms.database.JSONDatabase(work_dir=str(self.path), module_equality="structural")

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
