"""The TVM CPU pipeline fuses operators and schedules every function for threads and SIMD."""

import torch

import kiln
from kiln import models
from kiln.backends.targets import host_llvm_target, resolve_target


def test_host_target_is_detected_not_hard_coded():
    target = resolve_target("llvm").tvm_target
    from tvm.target import codegen

    assert target["kind"] == "llvm" and target["mcpu"] == codegen.llvm_get_system_cpu()
    assert target == host_llvm_target()
    assert resolve_target({"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu"}).backend == "tvm"


def test_fusion_reduces_kernels_and_schedules_parallel_vector_loops(tmp_path):
    compiled = kiln.compile(models.SmallCNN(), (torch.randn(1, 3, 32, 32),), debug_dir=tmp_path)
    notes = {r.name: r.note for r in compiled.report.rows if r.stage == "tvm"}
    before = int(notes["FuseOps"].split()[0])
    after = int(notes["FuseTIR"].split()[0])
    assert after < before, f"no fusion: {before} -> {after} TIR functions"
    scheduled = next(tmp_path.glob("*_tvm_ScheduleCPU.py")).read_text()
    assert "T.parallel(" in scheduled and "T.vectorized(" in scheduled
    assert scheduled.count('"tirx.is_scheduled": True') == after
