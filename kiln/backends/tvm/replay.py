"""A crash reproducer's replay (kiln/backends/tvm/reproducer.py writes the script that calls it):
the saved module through the one stage that failed, as Kiln's pipeline runs that stage."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import tvm

from kiln.backends.tvm.pipeline import fusion_passes, lowering_pipeline, schedule_passes


def replay(module_json: str, target: str, stage: str, factory: str = "") -> tvm.IRModule:
    """Run `stage` (one of Kiln's TVM passes by name, the factory at `factory`, or "codegen") on the
    saved module: what the reproducer script calls."""
    here = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else Path.cwd()
    path = Path(module_json) if Path(module_json).is_absolute() else here / module_json
    mod = tvm.ir.load_json(path.read_text())
    tvm_target = tvm.target.Target(target)
    with tvm_target:
        if stage == "codegen":
            return tvm.compile(mod, tvm_target, relax_pipeline=lowering_pipeline(tvm_target), tir_pipeline="default")
        if factory:
            module_name, _, qualname = factory.partition(":")
            make_pass = importlib.import_module(module_name)
            for part in qualname.split("."):
                make_pass = getattr(make_pass, part)
        else:
            make_pass = dict(fusion_passes(tvm_target) + schedule_passes(None, tvm_target))[stage]
        return make_pass()(mod)
