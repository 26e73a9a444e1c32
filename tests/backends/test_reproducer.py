"""A TVM pass that fails leaves a reproducer that, run on its own, fails the same way."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kiln
from kiln import models

PLANTED = "planted failure in a TVM pass"


def planted_pass():
    """A pass factory, importable by the reproducer: its pass always fails."""

    def fail(mod):
        raise RuntimeError(PLANTED)

    return fail


def test_failing_tvm_pass_writes_a_reproducer_that_fails_the_same_way(monkeypatch, tmp_path):
    from kiln.backends import tvm as tvm_backend

    stock = tvm_backend.fusion_passes
    monkeypatch.setattr(tvm_backend, "fusion_passes", lambda target: stock(target)[:3] + [("Planted", planted_pass)] + stock(target)[3:])
    with pytest.raises(kiln.BackendError) as caught:
        kiln.compile(models.MLP().eval(), (torch.randn(4, 64),), debug_dir=tmp_path)
    error = caught.value
    assert error.stage == "Planted" and PLANTED in str(error) and error.reproducer in str(error)
    script = Path(error.reproducer)
    assert script.parent == tmp_path and (tmp_path / "crash_Planted_module.py").read_text().startswith("# from tvm.script")
    replay = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert replay.returncode != 0 and f"RuntimeError: {PLANTED}" in replay.stderr


def test_a_kiln_stage_reproducer_replays_by_name(tmp_path):
    """Kiln's own passes (factories written as lambdas) replay by their name: the reproducer of
    a pass that succeeds here runs it to completion."""
    import tvm

    from kiln.backends.tvm.replay import replay
    from kiln.backends.tvm.reproducer import write_reproducer

    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with builder.function("main", [x]):
        builder.emit_func_output(builder.emit(relax.op.exp(x)))
    mod = builder.get()
    error = write_reproducer(mod, tvm.target.Target("llvm"), "FastMath", lambda: None, tmp_path, RuntimeError("x"))
    replayed = subprocess.run([sys.executable, error.reproducer], capture_output=True, text=True, timeout=300)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert isinstance(replay(str(tmp_path / "crash_FastMath_module.json"), "llvm", "FastMath"), tvm.IRModule)
