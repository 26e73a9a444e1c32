"""Convolutions and matmuls on NVIDIA tensor cores, whatever their size.

DLight's `Matmul` rule hands a float16 or int8 GEMM to its tensor-core schedules only when every
one of M, N and K is over 64: a ResNet-18's 64-channel convolutions, its 7 × 7 last stage and an
encoder's attention (K = the head width, 64) stayed on the CUDA cores, in a generic loop nest.
The tensor-core schedules themselves take any GEMM-like block, a convolution included: they
normalize it to C[S, I, J] += A[S, I, K] · B[S, J, K] by reindexing, so a convolution's
input windows are gathered straight into shared memory (implicit GEMM, no im2col buffer), pad
every axis to their tiles and fuse the epilogue (bias, folded batch norm, residual, activation)
into the store. This rule sends them every GEMM whose axes are each at least one 16-wide
fragment; depthwise convolutions (no output-channel axis in the input) and batch-1 linear
layers (a GEMV: M = 1) are not GEMMs and keep their memory-bound rules. float16 GEMMs take
Kiln's copy of DLight's schedule with a thread-block tile sized to the layer (wmma_gemm.py,
gemm_tile.py), int8 ones DLight's own.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import threading

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (IterKind, MatmulInt8Tensorization, check_sm_version, detect_iter_traits,
                                         get_in_out_dtypes, get_reduction_blocks)
from tvm.target import Target

from kiln.backends.tvm.cuda.gemm_tile import FRAGMENT, choose_tile
from kiln.backends.tvm.cuda.wmma_gemm import schedule_wmma_gemm

# DLight's int8 schedule pipelines its k loop over WMMA fragments, which TVM 0.27's software
# pipeliner refuses for every shape ("fragment_info" check): built unpipelined, it compiles
_PIPELINE_ANNOTATIONS = ("software_pipeline_stage", "software_pipeline_order", "software_pipeline_async_stages")


def _float16_gemm(func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
    """WMMA m16n16k16, float32 accumulation where the block asks for it, in a tile sized to the layer."""
    return schedule_wmma_gemm(func, choose_tile(*gemm_size(func), str(target.attrs.get("arch", ""))))


def _int8_gemm(func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
    """DLight's s8 × s8 → s32 WMMA schedule (int8_operands.py makes Kiln's int8 layers so), unpipelined."""
    sch = MatmulInt8Tensorization().apply(func, target, tunable)
    if sch is not None:
        _unpipelined(sch)
    return sch


# input dtype → (its tensor-core schedule, the first architecture with its instruction)
_SCHEDULES = {"float16": (_float16_gemm, 70), "int8": (_int8_gemm, 75)}


class TensorCoreGemm(GPUScheduleRule):
    """Every float16 or int8 GEMM-like kernel (matmul, dense, convolution in any layout) with
    M, N, K ≥ 16 on the tensor cores: float16 through Kiln's WMMA schedule (wmma_gemm.py), int8
    through DLight's."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if func.attrs is not None and "dlight.do_not_tensorize" in func.attrs:
            return None
        chosen = self.schedule_for(func, target)
        if chosen is None:
            return None
        _import_tensor_intrinsics()
        return chosen(func, target, tunable)

    @staticmethod
    def schedule_for(func: tirx.PrimFunc, target: Target):
        """The tensor-core schedule for `func` on `target`, or None when it is not a GEMM of at
        least one fragment per axis, or its dtype has no tensor-core instruction there."""
        sch = s_tir.Schedule(func)
        reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
        if reductions is None or len(reductions) != 1:
            return None
        block = sch.get(reductions[0])
        traits = detect_iter_traits(block)
        if traits is None:
            return None
        in_dtype, out_dtype = get_in_out_dtypes(block)
        schedule, first_arch = _SCHEDULES.get(in_dtype, (None, None))
        if schedule is None or check_sm_version(str(target.attrs.get("arch", ""))) < first_arch:
            return None
        if in_dtype == "int8" and out_dtype != "int32" or in_dtype == "float16" and out_dtype not in ("float16", "float32"):
            return None
        *_, block_traits = traits
        axes = (IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K)
        return schedule if all(_at_least(block_traits, kind, FRAGMENT) for kind in axes) else None


def _unpipelined(sch: s_tir.Schedule) -> None:
    """Take the software-pipeline annotations off every loop of `sch`."""
    pending = list(sch.get_child_blocks(get_root_block(sch)))
    while pending:
        block = pending.pop()
        pending.extend(sch.get_child_blocks(block))
        for loop in sch.get_loops(block):
            for key in _PIPELINE_ANNOTATIONS:
                if key in sch.get(loop).annotations:
                    sch.unannotate(loop, key)


def _at_least(traits, kind: IterKind, size: int) -> bool:
    """Whether the axes of `kind` fuse to `size` or more (a dynamic extent counts as enough: the
    schedule pads it)."""
    extent = _extent(traits, kind)
    return extent is None or extent >= size


def _extent(traits, kind: IterKind) -> int | None:
    """The fused extent of the axes of `kind`; None when one of them is dynamic."""
    extent = 1
    for trait in traits:
        if trait.kind == kind:
            if not isinstance(trait.extent, tirx.IntImm):
                return None
            extent *= int(trait.extent)
    return extent


def gemm_size(func: tirx.PrimFunc) -> tuple[int | None, int | None, int | None]:
    """M, N and K of `func`'s GEMM block (a convolution's M: its output pixels; N: its output
    channels; K: its window times its input channels), None where dynamic."""
    sch = s_tir.Schedule(func)
    block = sch.get(get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))[0])
    *_, traits = detect_iter_traits(block)
    return tuple(_extent(traits, kind) for kind in (IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K))


@functools.cache
def _import_tensor_intrinsics() -> None:
    """Import TVM's tensor-core intrinsics, cheaply. The module parses some 300 TVMScript
    functions when imported, and TVMScript's parser calls `inspect.stack()` for each; for every
    frame whose file does not exist (the import machinery's frozen modules) `inspect` scans all of
    `sys.modules`, thousands in a process with torch: 60-90 s of a ResNet-18 fp16 CUDA build. On a
    thread of its own (a shallow stack), with the frozen frames' modules known to `inspect`'s
    cache, it takes a second or two."""
    frozen = {name: name.split()[-1].rstrip(">") for name in ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")}
    known = {name: inspect.modulesbyfile[name] for name in frozen if name in inspect.modulesbyfile}
    inspect.modulesbyfile.update(frozen)
    try:
        thread = threading.Thread(target=importlib.import_module, args=("tvm.s_tir.tensor_intrin.cuda",), name="kiln-tvm-intrinsics")
        thread.start()
        thread.join()
    finally:
        for name in frozen:
            inspect.modulesbyfile.pop(name, None)
        inspect.modulesbyfile.update(known)
