"""A float16 or int8 GEMM on the tensor cores (WMMA m16n16k16) with the thread-block tile as a parameter.

This is DLight's `MatmulTensorization` and `MatmulInt8Tensorization` (tvm/s_tir/dlight/gpu/matmul.py,
two copies of one schedule that differ in dtypes, shared-memory alignment and K step) as one
schedule, with their fixed 128 × 128 tile replaced by a `GemmTile` (gemm_tile.py chooses it per
layer): the GEMM-like block (a matmul, or a convolution's implicit GEMM) is normalized to
C[S, I, J] += A[S, I, K] · B[S, J, K] by reindexing, padded to whole tiles, its operands staged
through shared memory (double buffered; float16 software-pipelined over K), multiplied in 16 × 16
fragments by WMMA, accumulated in float32 where a float16 block asks for it (int32 for int8), and
stored through shared memory with the epilogue fused.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.matmul import (auto_inline_consumer_chain, auto_inline_producers, get_in_out_dtypes, get_index_map,
                                         get_reduction_blocks)

from kiln.backends.tvm.cpu.schedules import STRATEGY_ANNOTATION
from kiln.backends.tvm.cuda.gemm_tile import FRAGMENT, GemmTile

WARP = 32
VECTOR = 4  # float16 elements per thread per shared-memory copy
# the statements of the K loop, in the order and stages DLight pipelines them
_K_PIPELINE = {"software_pipeline_order": [0, 3, 1, 4, 5, 2, 6], "software_pipeline_stage": [0, 0, 0, 0, 0, 1, 1]}
_FRAGMENT_PIPELINE = {"software_pipeline_order": [0, 1, 2], "software_pipeline_stage": [0, 0, 1]}
STATIC_SHARED_BYTES = 48 * 1024  # what a block may declare statically on every architecture
# operand dtype → shared-memory row padding (factor, offset) that keeps WMMA loads off bank conflicts (DLight's)
_OPERAND_ALIGNMENT = {"float16": (16, 8), "int8": (32, 16)}


def _accumulator_staging(tile: GemmTile, accumulate: str) -> str:
    """Where the accumulators pass on their way out: static shared memory where the tile fits in
    it. TVM merges all of a kernel's dynamic shared memory into one buffer, and with the operands'
    float16 and a float32 accumulator in it, smaller tiles failed in code generation ("tvm_access_ptr
    element type must match the source buffer"); DLight's 128 × 128 float32 tile (64 KB) needs the
    dynamic kind, and builds with it."""
    size = tile.rows * tile.columns * (2 if accumulate == "float16" else 4)
    return "shared" if size <= STATIC_SHARED_BYTES else "shared.dyn"


def schedule_wmma_gemm(func: tirx.PrimFunc, tile: GemmTile) -> s_tir.Schedule | None:
    """`func`'s one GEMM block (float16 or int8 operands) on the tensor cores in tiles of `tile`;
    None where it has no GEMM block or no index map to one (the caller then tries the next rule)."""
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    sch = s_tir.Schedule(func)
    reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if reductions is None:
        return None
    block = reductions[0]
    operands, accumulate = get_in_out_dtypes(sch.get(block))  # float32 accumulation where the block asks for it
    # TVM 0.27's software pipeliner refuses int8 WMMA fragments for every shape ("fragment_info" check)
    pipelined = operands == "float16"
    # 1. normalize to C[S, I, J] += A[S, I, K] · B[S, J, K]
    reindexed = (sch.reindex(block, ("read", 0)), sch.reindex(block, ("read", 1)), sch.reindex(block, ("write", 0)))
    index_maps = get_index_map(sch.get(block))
    if index_maps is None:
        return None
    matmul_map, a_map, b_map, c_map = index_maps
    sch.transform_layout(reindexed[0], ("write", 0), a_map)
    sch.transform_layout(reindexed[1], ("write", 0), b_map)
    sch.transform_layout(reindexed[2], ("read", 0), c_map)
    sch.transform_block_layout(block, matmul_map)
    # 2. pad to whole tiles
    sch.pad_einsum(block, [1, tile.rows, tile.columns, FRAGMENT * tile.k_fragments])
    # 3. fragments innermost, then blocks, warps and each warp's fragments
    batch, i, j, k = sch.get_loops(block)
    i, i_inner = sch.split(i, [None, FRAGMENT])
    j, j_inner = sch.split(j, [None, FRAGMENT])
    k, k_inner = sch.split(k, [None, FRAGMENT])
    sch.reorder(i, j, k, i_inner, j_inner, k_inner)
    block_inner, block_outer = block, sch.blockize(i_inner)
    i0, i1, i2, i3 = sch.split(i, [None, 1, tile.warps_m, tile.fragments_m])
    j0, j1, j2, j3 = sch.split(j, [1, None, tile.warps_n, tile.fragments_n])
    k0, k1 = sch.split(k, [None, tile.k_fragments])
    for loop, annotations in ((k0, _K_PIPELINE), (k1, _FRAGMENT_PIPELINE)) if pipelined else ():
        for key, value in annotations.items():
            sch.annotate(loop, key, value)
    # the fragment loop unrolled, so its double-buffered fragments are indexed by constants: a
    # loop counter's index left ptxas spilling a few registers of some 32 × 32 tiles
    sch.unroll(k1)
    sch.reorder(i0, j0, i1, j1, j2, i2, k0, k1, i3, j3)
    sch.bind(batch, "blockIdx.z")
    sch.bind(sch.fuse(i0, j0), "blockIdx.x")
    sch.bind(sch.fuse(i1, j1), "blockIdx.y")
    warp = sch.fuse(j2, i2)
    sch.bind(warp, "threadIdx.y")

    alignment = _OPERAND_ALIGNMENT[operands]

    def stage_in_shared(operand: int):
        copy = sch.cache_read(block_outer, operand, "shared.dyn")
        sch.compute_at(copy, k0)
        fused = sch.fuse(*sch.get_loops(copy)[-2:])
        _, warps, lanes, vector = sch.split(fused, [None, tile.warps, WARP, VECTOR])
        sch.bind(lanes, "threadIdx.x")
        sch.bind(warps, "threadIdx.y")
        sch.vectorize(vector)
        sch.storage_align(copy, 0, axis=-2, factor=alignment[0], offset=alignment[1])  # rows apart: no bank conflicts
        sch.annotate(copy, "tirx.manifest_shared_memory_local_stage", 1)
        sch.annotate(copy, "double_buffer_scope", 0)
        auto_inline_producers(sch, copy)  # the convolution's input windows gathered straight into shared memory

    stage_in_shared(0)
    stage_in_shared(1)
    fragments = [sch.cache_read(block_outer, operand, scope) for operand, scope in ((0, "wmma.matrix_a"), (1, "wmma.matrix_b"))]
    for fragment in fragments:
        sch.compute_at(fragment, k1)
    staging = _accumulator_staging(tile, accumulate)
    to_global = sch.cache_write(block_outer, 0, staging)
    sch.storage_align(to_global, 0, -2, 16, 4)
    store = sch.cache_write(block_outer, 0, "wmma.accumulator")
    sch.reverse_compute_at(store, warp)
    sch.reverse_compute_at(to_global, warp)
    init = sch.get_child_blocks(sch.decompose_reduction(block_outer, k0))[0]

    def fragment_loops(stage) -> tuple:
        """The last two loops of `stage` as 16 × 16 fragments: the loop over one fragment's rows."""
        rows, columns = sch.get_loops(stage)[-2:]
        rows_outer, rows_inner = sch.split(rows, [None, FRAGMENT])
        columns_outer, columns_inner = sch.split(columns, [None, FRAGMENT])
        sch.reorder(rows_outer, columns_outer, rows_inner, columns_inner)
        return rows_outer, columns_outer, rows_inner

    stored = fragment_loops(store)[2]
    loads = []
    for fragment in fragments:
        rows_outer, columns_outer, rows_inner = fragment_loops(fragment)
        sch.unroll(rows_outer)
        sch.unroll(columns_outer)
        loads.append(rows_inner)
    intrinsics = get_wmma_intrin_group(load_scope="shared.dyn", store_scope=staging, in_dtype=operands,
                                       out_dtype=accumulate, trans_b=True)
    sch.tensorize(loads[0], intrinsics["load_a"])
    sch.tensorize(loads[1], intrinsics["load_b"])
    sch.tensorize(sch.get_loops(init)[-2], intrinsics["init"])
    sch.tensorize(stored, intrinsics["store"])
    sch.tensorize(sch.get_loops(block_inner)[-3], intrinsics["compute"])
    # what `cm.profile()` and the IR dumps name the kernel's schedule by
    sch.annotate(block_outer, STRATEGY_ANNOTATION, f"wmma_gemm_{tile.describe()}")
    auto_inline_consumer_chain(sch, to_global)  # the epilogue: bias, batch norm, residual, activation
    fused = sch.fuse(*sch.get_loops(to_global)[-2:])
    _, lanes, vector = sch.split(fused, [None, WARP, VECTOR])
    sch.bind(lanes, "threadIdx.x")
    sch.vectorize(vector)
    return sch
