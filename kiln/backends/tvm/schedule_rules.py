"""The rules that schedule a kernel no tuning record covers: Kiln's on CPUs, Kiln's tensor-core
GEMM then DLight's on GPUs. The build applies them to every such kernel; tuning measures what a
candidate must beat against them."""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from kiln.backends.tvm.cpu.schedules import CPU_RULES
from kiln.backends.tvm.cuda.tensor_core import TensorCoreGemm


def schedule_rules(target: Target) -> list[ScheduleRule]:
    """Kiln's CPU rule on CPUs; on GPUs Kiln's tensor-core rule for float16 and int8 GEMMs and
    convolutions, then DLight's: thread-bound matmul, GEMV and reductions, and a fallback for the rest."""
    if target.kind.name == "cuda":
        return [TensorCoreGemm(), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    return CPU_RULES


def default_schedule(func: tvm.tirx.PrimFunc, target: Target):
    """The schedule the default rules give one function: the first rule that applies."""
    for rule in schedule_rules(target):
        scheduled = rule.apply(func, target, False)
        if scheduled is not None:
            return scheduled[0] if isinstance(scheduled, list) else scheduled
    raise ValueError(f"no default schedule rule applies to this function for target {target.kind.name}")
