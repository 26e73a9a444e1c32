"""Kiln's CPU schedule rules, in DLight's shape: each rule takes a fused TIR function and returns
a schedule, or None when it does not apply; the first rule that applies wins.

Rules for specific operator classes (GEMM, conv, depthwise, pooling, reductions) go before the
fallback in `CPU_RULES`; the fallback only guarantees that nothing runs on one core, unvectorized.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target
from tvm.target.codegen import llvm_get_cpu_features


def vector_lanes(target: Target, bits_per_lane: int = 32) -> int:
    """fp32 lanes of the widest SIMD register the target has."""
    features = llvm_get_cpu_features(target)
    bits = 512 if "avx512f" in features else 256 if "avx" in features else 128
    return bits // bits_per_lane


def _constant(extent) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm) else None


class ParallelVectorize(ScheduleRule):
    """Fallback for any CPU function: inline elementwise producers/consumers, then for every
    remaining block put spatial loops outside reductions, run the outer spatial loops in parallel
    and vectorize the innermost spatial loop when its extent is a multiple of the vector width."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        lanes = vector_lanes(target)
        for info in try_inline(sch, infos):
            kinds = info.dom_kind()
            if "O" in kinds or not kinds:
                continue
            try:
                self._schedule_block(sch, info.block_rv, kinds, lanes)
            except s_tir.ScheduleError:
                continue  # primitives are atomic: the block stays as it was
        return sch

    @staticmethod
    def _schedule_block(sch: s_tir.Schedule, block, kinds: str, lanes: int) -> None:
        loops = sch.get_loops(block)
        spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
        reduction = [loop for loop, kind in zip(loops, kinds) if kind == "R"]
        if not spatial:
            return
        sch.reorder(*spatial, *reduction)
        vector = None
        extent = _constant(sch.get(spatial[-1]).extent)
        if extent is not None and extent % lanes == 0 and extent >= lanes:
            outer, vector = sch.split(spatial[-1], [None, lanes])
            spatial[-1] = outer
            sch.reorder(*spatial, *reduction, vector)
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
        if reduction:
            sch.decompose_reduction(block, reduction[0])
        if vector is not None:
            sch.vectorize(vector)


CPU_RULES: list[ScheduleRule] = [ParallelVectorize()]
