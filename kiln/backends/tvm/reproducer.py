"""Crash reproducers, LLVM's habit: when a TVM pass or the code generator fails, the module as it
was before that stage is written (TVMScript to read, TVM's JSON to replay exactly) with a
few-line Python script that runs the failing stage on it alone, and the error names the script.

A maintainer (ours or TVM's) gets the failure without the user's model, weights or Kiln's
pipeline in front of it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import tvm

from kiln.errors import BackendError

SCRIPT = '''"""Replays Kiln's failing TVM stage '{stage}' on the module written beside this script."""
import sys
sys.path[:0] = {paths!r}
from kiln.backends.tvm.replay import replay

replay({module!r}, target={target!r}, stage={stage!r}, factory={factory!r})
'''


def factory_path(make_pass: Callable) -> str:
    """`module:qualname` of a pass factory that can be imported again ('' for a lambda)."""
    name = getattr(make_pass, "__qualname__", "")
    return "" if "<" in name else f"{make_pass.__module__}:{name}"


def write_reproducer(mod: tvm.IRModule, target: tvm.target.Target, stage: str, make_pass: Callable | None,
                     folder: Path | None, error: Exception) -> BackendError:
    """The BackendError for `stage` failing on `mod`, after writing its reproducer into `folder`
    (a new temporary folder when the compile has no debug directory)."""
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="kiln-crash-"))
    safe = "".join(c if c.isalnum() else "_" for c in stage)
    module_json = folder / f"crash_{safe}_module.json"
    script = folder / f"crash_{safe}_replay.py"
    (folder / f"crash_{safe}_module.py").write_text(mod.script(show_meta=False))
    module_json.write_text(tvm.ir.save_json(mod))
    kiln_root = str(Path(__file__).resolve().parents[3])
    factory = factory_path(make_pass) if make_pass is not None else ""
    paths = [kiln_root] + ([str(Path.cwd())] if factory and not factory.startswith("kiln.") else [])
    script.write_text(SCRIPT.format(stage=stage, paths=paths, module=module_json.name, target=str(target), factory=factory))
    return BackendError(
        f"TVM stage '{stage}' failed: {type(error).__name__}: {error}\n"
        f"  reproducer: python {script}  (the module before '{stage}': {folder / f'crash_{safe}_module.py'})",
        stage=stage, reproducer=str(script))
