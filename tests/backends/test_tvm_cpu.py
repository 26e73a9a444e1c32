"""The TVM CPU pipeline fuses operators and schedules every function for threads and SIMD."""

import os

import torch

import kiln
from kiln import models
from kiln.backends.targets import host_llvm_target, resolve_target
from tests.conftest import assert_matches, eager


def test_host_target_is_detected_not_hard_coded():
    target = resolve_target("llvm").tvm_target
    from tvm.target import codegen

    assert target["kind"] == "llvm" and target["mcpu"] == codegen.llvm_get_system_cpu()
    assert target == host_llvm_target()
    assert resolve_target({"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu"}).backend == "tvm"


def test_fusion_reduces_kernels_and_schedules_parallel_vector_loops(tmp_path):
    compiled = kiln.compile(models.SmallCNN().eval(), (torch.randn(1, 3, 32, 32),), debug_dir=tmp_path)
    notes = {r.name: r.note for r in compiled.report.rows if r.stage == "tvm"}
    before = int(notes["FuseOps"].split()[0])
    after = int(notes["FuseTIR"].split()[0])
    assert after < before, f"no fusion: {before} -> {after} TIR functions"
    scheduled = next(tmp_path.glob("*_tvm_ScheduleCPU.py")).read_text()
    assert "T.parallel(" in scheduled and "T.vectorized(" in scheduled
    assert scheduled.count('"tirx.is_scheduled": True') == after


def test_threads_setting_is_kept_and_saved(tmp_path):
    import tvm_ffi

    model, x = models.MLP().eval(), torch.randn(4, 64)
    compiled = kiln.compile(model, (x,), threads=1)
    compiled(x)
    assert tvm_ffi.get_global_func("runtime.NumThreads")() == 1
    compiled.save(tmp_path / "mlp.kiln")
    assert kiln.load(tmp_path / "mlp.kiln").threads == 1
    kiln.compile(model, (x,))(x)  # default: every core the pool was sized for
    assert tvm_ffi.get_global_func("runtime.NumThreads")() == int(os.environ["TVM_NUM_THREADS"])


def test_idle_tvm_workers_spin_about_a_millisecond_unless_the_user_chose(monkeypatch):
    """kiln/backends/tvm/runtime/threads.py: TVM's default spin starves the PyTorch run after a
    Kiln call; the setting must be in the environment before TVM's pool reads it (on import)."""
    import subprocess
    import sys

    from kiln.backends.tvm.runtime.threads import size_thread_pool

    env = {key: value for key, value in os.environ.items() if key != "TVM_THREAD_POOL_SPIN_COUNT"}
    script = "import os, kiln.backends.tvm; print(os.environ['TVM_THREAD_POOL_SPIN_COUNT'])"
    assert subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "1000"
    monkeypatch.setenv("TVM_THREAD_POOL_SPIN_COUNT", "5000")
    size_thread_pool()
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "5000"


def test_input_not_64_byte_aligned_is_accepted():
    # TVM's DLPack import refuses data under 64-byte alignment; a numpy view can be anywhere
    import numpy as np

    model = torch.nn.Linear(3, 4).eval()
    compiled = kiln.compile(model, (torch.randn(2, 3),))
    view = np.arange(7, dtype=np.float32)[1:].reshape(2, 3)
    assert torch.from_numpy(view).data_ptr() % 64 != 0
    assert_matches(compiled(view), eager(model, torch.from_numpy(view)))
