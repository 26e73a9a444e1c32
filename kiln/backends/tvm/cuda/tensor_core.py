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
layers (a GEMV: M = 1) are not GEMMs and keep their memory-bound rules. The schedule is Kiln's
copy of DLight's with a thread-block tile sized to the layer (wmma_gemm.py, gemm_tile.py).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import threading

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import IterKind, check_sm_version, detect_iter_traits, get_in_out_dtypes, get_reduction_blocks
from tvm.target import Target

from kiln.backends.tvm.cpu.schedules import SCHEDULE_FAILURES
from kiln.backends.tvm.cuda.gemm_tile import FRAGMENT, choose_tile
from kiln.backends.tvm.cuda.wmma_gemm import schedule_wmma_gemm

# input dtype → the first architecture with its tensor-core instruction: WMMA m16n16k16 in float16
# (float32 accumulation where the block asks for it), s8 × s8 → s32 (int8_operands.py makes Kiln's
# int8 layers so)
_FIRST_ARCH = {"float16": 70, "int8": 75}


class TensorCoreGemm(GPUScheduleRule):
    """Every float16 or int8 GEMM-like kernel (matmul, dense, convolution in any layout) with
    M, N, K ≥ 16 on the tensor cores, through Kiln's WMMA schedule (wmma_gemm.py) in a tile sized
    to the layer (gemm_tile.py)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if func.attrs is not None and "dlight.do_not_tensorize" in func.attrs:
            return None
        if not self.takes(func, target):
            return None
        _import_tensor_intrinsics()
        block = _gemm_block(func)
        operands, _ = get_in_out_dtypes(block)
        try:
            return schedule_wmma_gemm(func, choose_tile(*gemm_size(block), str(target.attrs.get("arch", "")), operands))
        except SCHEDULE_FAILURES:
            return None  # a GEMM the schedule cannot take: DLight's rules after this one schedule it

    @staticmethod
    def takes(func: tirx.PrimFunc, target: Target) -> bool:
        """Whether `func` is a GEMM of at least one fragment per axis whose dtype has a
        tensor-core instruction on `target`."""
        block = _gemm_block(func)
        if block is None:
            return False
        traits = detect_iter_traits(block)
        in_dtype, out_dtype = get_in_out_dtypes(block)
        if traits is None or in_dtype not in _FIRST_ARCH or check_sm_version(str(target.attrs.get("arch", ""))) < _FIRST_ARCH[in_dtype]:
            return False
        if in_dtype == "int8" and out_dtype != "int32" or in_dtype == "float16" and out_dtype not in ("float16", "float32"):
            return False
        *_, block_traits = traits
        return all(_at_least(block_traits, kind, FRAGMENT) for kind in (IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K))


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


def _gemm_block(func: tirx.PrimFunc) -> s_tir.SBlock | None:
    """`func`'s one reduction block (None when it has none, or several)."""
    sch = s_tir.Schedule(func)
    reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    return sch.get(reductions[0]) if reductions is not None and len(reductions) == 1 else None


def gemm_size(block: s_tir.SBlock) -> tuple[int | None, int | None, int | None]:
    """M, N and K of a GEMM block (a convolution's M: its output pixels; N: its output channels;
    K: its window times its input channels), None where dynamic."""
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
