"""Kiln's CPU schedules, in DLight's shape: `CPUSchedule` is a DLight `ScheduleRule` applied to every
fused TIR function; inside it, each block gets the first block strategy of `BLOCK_STRATEGIES` that
applies. A strategy for a new operator class goes in that list, before the fallback.

The graph arrives in channels-last layout (see `pipeline.py`), so every heavy operator is a
reduction whose innermost output axis is contiguous in both its output and its weights: matmul
(i, j | k), conv2d NHWC/HWIO (h, w, o | kh, kw, i), depthwise conv (h, w, c | kh, kw). One strategy,
the register-tiled reduction, covers them all: an MR×NR tile of the output lives in vector
registers across the whole reduction, NR along the contiguous axis (vectorized), MR along the next
(unrolled); outer tiles run in parallel; elementwise epilogues (bias, batch norm, activation,
residual add) are computed as the tile is written back. Integer layers use the same tiling with
the CPU's dot-product instruction as the innermost step (`dot_instructions.py`: vpdpbusd, vpmaddwd, sdot),
or, on AMX, as tiles of 16 rows × one weight panel computed by the matrix unit (`amx.py`).
"""

from __future__ import annotations

import math
from typing import Callable

from tvm import s_tir, tirx
from tvm.sym.analyzer import Analyzer
from tvm.error import InternalError
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from kiln.backends.tvm.cpu import amx
from kiln.backends.tvm.cpu.dot_instructions import AMX_TILES, DOT_ANNOTATION, INSTRUCTIONS, TAPS_ANNOTATION, DotInstruction
from kiln.backends.tvm.cpu.pack_weights import PACKED_CONV2D_DOT, PACKED_MATMUL_DOT, packed_panel_width, static_extent, weight_buffer
from kiln.backends.tvm.cpu.register_tile import VectorUnit, column_lanes, register_tile, vector_unit
from kiln.backends.tvm.cpu.winograd import INPUT_ROWS, INPUT_TRANSFORM, OUTPUT_COLUMNS, OUTPUT_TRANSFORM, TILE

# A primitive that does not apply raises ScheduleError; some raise TVM's internal errors instead.
SCHEDULE_FAILURES = (s_tir.ScheduleError, InternalError, ValueError)


Strategy = Callable[[s_tir.Schedule, SBlockInfo, VectorUnit], bool]


def _split_loops(sch: s_tir.Schedule, info: SBlockInfo) -> tuple[list, list]:
    kinds = info.dom_kind()
    loops = sch.get_loops(info.block_rv)
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
    reduction = [loop for loop, kind in zip(loops, kinds) if kind == "R"]
    sch.reorder(*spatial, *reduction)
    return spatial, reduction


def _inline_epilogues(sch: s_tir.Schedule, block) -> None:
    """Fold elementwise consumers of `block` into it, one after another, while that works."""
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except SCHEDULE_FAILURES:
            return


def register_tiled_reduction(sch: s_tir.Schedule, info: SBlockInfo, unit: VectorUnit) -> bool:
    """Output tile in registers across the reduction; see the module docstring."""
    return _tiled_reduction(sch, info, unit, dot=None)


DOT_BLOCKS = (PACKED_CONV2D_DOT, PACKED_MATMUL_DOT)


def integer_dot_reduction(sch: s_tir.Schedule, info: SBlockInfo, unit: VectorUnit) -> bool:
    """The same tiling for integer layers whose weights `pack_weights.py` interleaved in groups:
    each lanes × group piece of the reduction is one instruction (`dot_instructions.py`)."""
    block = sch.get(info.block_rv)
    if block.name_hint not in DOT_BLOCKS:
        return False
    dot = INSTRUCTIONS.get(str(block.annotations.get(DOT_ANNOTATION, "")))
    if dot is None:
        return False
    sch.unannotate(info.block_rv, DOT_ANNOTATION)  # the intrinsic's description has none to match
    return _tiled_reduction(sch, info, unit, dot=dot)


def amx_tile_reduction(sch: s_tir.Schedule, info: SBlockInfo, unit: VectorUnit) -> bool:
    """Integer and bf16 layers packed for AMX: each block of rows (`amx.tile_blocking`) × panel of
    the output is one `amx.py` kernel over the innermost reduction (a convolution's input
    channels, under its kernel taps), accumulating into a tile buffer that the epilogue
    (zero-point correction, requantization) reads back. Blocks of rows run in parallel, or, where
    a layer has enough panels and a panel's accumulators fit in cache, whole panels do."""
    block = sch.get(info.block_rv)
    dot = AMX_TILES.get(str(block.annotations.get(DOT_ANNOTATION, "")))
    if block.name_hint not in DOT_BLOCKS or dot is None:
        return False
    sch.unannotate(info.block_rv, DOT_ANNOTATION)
    taps = (1, 1)
    if TAPS_ANNOTATION in block.annotations:
        taps = tuple(int(v) for v in str(block.annotations[TAPS_ANNOTATION]).split("x"))
        sch.unannotate(info.block_rv, TAPS_ANNOTATION)
    spatial, reduction = _split_loops(sch, info)
    columns, rows = _known_multiple(sch.get(spatial[-1]).extent), _known_multiple(sch.get(spatial[-2]).extent)
    panel, steps = packed_panel_width(block), static_extent(sch.get(reduction[-1]).extent)
    blocking = None if panel is None else amx.tile_blocking(rows, panel)
    if None in (columns, blocking, steps) or columns % panel:
        return False
    height, row_tiles = blocking
    outputs_per_panel = math.prod(static_extent(sch.get(loop).extent) or 0 for loop in spatial[:-1]) * panel
    panel_per_task = columns // panel >= PANEL_TASKS and 0 < outputs_per_panel * 4 <= PANEL_ACCUMULATOR_BYTES
    # one kernel call for all of a panel's rows when nothing else (batch, image rows) lies between
    # them and the chunk loop: the tile configuration is set once per chunk, not per block of rows
    row_blocks = rows // (height * row_tiles) if panel_per_task and outputs_per_panel == rows * panel else 1
    row_outer, row_inner = sch.split(spatial[-2], [None, height * row_tiles * row_blocks])
    column_outer, column_inner = sch.split(spatial[-1], [None, panel])
    if panel_per_task:
        # one panel per task, its reduction (taps, then chunks of input channels) outermost: each
        # chunk of weights stays in L1 while every row tile of the panel reads it, rather than
        # streaming from L2 once per row tile; the panel's accumulators carry over from chunk to chunk
        chunk = amx.weight_chunk(dot, steps, panel)
        chunk_outer, chunk_inner = sch.split(reduction[-1], [None, chunk])
        sch.reorder(column_outer, *reduction[:-1], chunk_outer, *spatial[:-2], row_outer, row_inner, column_inner, chunk_inner)
        tile, initialize_at = column_outer, (reduction[:-1] or [chunk_outer])[0]
        kernel_at, taps = row_inner, (1, 1)
    else:
        chunk = steps
        sch.reorder(column_outer, *spatial[:-2], row_outer, *reduction[:-1], row_inner, column_inner, reduction[-1])
        tile = sch.fuse(column_outer, *spatial[:-2], row_outer)
        initialize_at = (reduction[:-1] or [row_inner])[0]
        # a stride-1 convolution's kernel takes every tap: the tile configuration and the
        # accumulators are loaded once per block of rows, not once per tap
        kernel_at = reduction[0] if taps != (1, 1) else row_inner
    sch.parallel(tile)
    write_back = sch.cache_write(info.block_rv, 0, "global")
    sch.reverse_compute_at(write_back, tile)
    _inline_epilogues(sch, write_back)
    sch.decompose_reduction(info.block_rv, initialize_at)
    sch.annotate(kernel_at, TENSORIZE, amx.tile_intrinsic(dot, height, row_tiles, panel, chunk, taps, row_blocks))
    write_loops = sch.get_loops(write_back)
    _, vector = sch.split(sch.fuse(*write_loops[1:]), [None, amx.TILE_COLUMNS])
    sch.vectorize(vector)
    return True


PANEL_TASKS = 4  # panels a layer needs for one panel per parallel task
PANEL_ACCUMULATOR_BYTES = 64 * 1024  # a panel's accumulators (all its rows) that stay in cache across its reduction
WIDENED_WEIGHT = "widened_weight"  # quantized.py's weight-only panels, widened to float in the kernel
TENSORIZE = "kiln.tensorize"  # loop annotation: the tensor intrinsic this loop nest becomes


def _tensorize_marked(sch: s_tir.Schedule) -> None:
    """Tensorize the loops `integer_dot_reduction` marked, now that no strategy will fork the schedule."""
    for name in DOT_BLOCKS:
        try:
            block = sch.get_sblock(f"{name}_update")
        except SCHEDULE_FAILURES:
            continue  # none in this function
        for loop in sch.get_loops(block):
            intrinsic = sch.get(loop).annotations.get(TENSORIZE)
            if intrinsic is not None:
                sch.unannotate(loop, TENSORIZE)
                try:
                    sch.tensorize(loop, str(intrinsic))
                except SCHEDULE_FAILURES:
                    pass  # stays plain integer code: correct, slower
                break


CACHED_WEIGHT_BYTES = 256 * 1024  # a quarter of a typical per-core L2


def _fits_in_cache(block) -> bool:
    """Whether the block's weights are a known size under CACHED_WEIGHT_BYTES."""
    extents = [static_extent(d) for d in weight_buffer(block).shape]
    return None not in extents and math.prod(extents) * weight_buffer(block).dtype.bits // 8 <= CACHED_WEIGHT_BYTES


def _columns_read_contiguously(block) -> bool:
    """Whether an operand's innermost axis follows the block's innermost spatial axis, the tile's
    vectorized columns (a matmul's weights, a convolution's output channels), or the operand is a
    panel packed for an integer instruction (its innermost axis is the instruction's group). A reduction over an
    operand's innermost axis (a row's max or sum, layer norm's mean) has no such operand: tiled,
    its vectors would gather across rows (BERT's per-token absolute maximum ran 25× slower)."""
    if block.name_hint in DOT_BLOCKS or str(block.writes[0].source.dtype) in ("bfloat16", "float16"):
        return True  # half outputs: as before (TVM's bf16 legalization fails on the other strategies' vectors)
    spatial = [var.var for var in block.iter_vars if var.iter_type == tirx.IterVar.DataPar]
    reduced = [var.var for var in block.iter_vars if var.iter_type == tirx.IterVar.CommReduce]
    written = {region.source.name for region in block.writes}

    def uses(expressions, variables) -> bool:
        return any(used.same_as(v) for e in expressions for used in tirx.analysis.undefined_vars(e) for v in variables)

    # an operand indexed by the columns innermost and by the reduction: w[k, j], not a row's mean[i]
    return bool(spatial) and any(
        region.source.name not in written and len(region.region) > 0 and uses([region.region[-1].min], spatial[-1:])
        and uses([r.min for r in region.region], reduced)
        for region in block.reads
    )


def _tiled_reduction(sch: s_tir.Schedule, info: SBlockInfo, unit: VectorUnit, dot: DotInstruction | None) -> bool:
    """The register-tiled reduction; with `dot`, its innermost lanes × group reduction steps become
    that instruction's tensor intrinsic. A weight-only matmul's widened panel is computed per column block."""
    if not info.is_reduction() or "O" in info.dom_kind() or not _columns_read_contiguously(sch.get(info.block_rv)):
        return False
    spatial, reduction = _split_loops(sch, info)
    if len(spatial) == 1:  # a GEMV whose single row TVM dropped: one row of the tile
        spatial.insert(0, sch.add_unit_loop(spatial[0]))
    if not reduction:
        return False
    columns, rows = _known_multiple(sch.get(spatial[-1]).extent), _known_multiple(sch.get(spatial[-2]).extent)
    if columns is None:
        return False
    lanes = dot.lanes if dot is not None else column_lanes(columns, unit.lanes)
    if lanes is None or columns % lanes:
        return False
    block = info.block_rv
    panel = packed_panel_width(sch.get(block))  # weights packed for a tile of this width
    tile = register_tile(columns, rows, _reduction_steps(sch.get(block)), unit, lanes, vectors=panel // lanes if panel else None)
    if tile is None or (panel and tile.columns != panel):
        return False
    mr, nr = tile.rows, tile.columns
    row_outer, row_inner = sch.split(spatial[-2], [None, mr])
    column_outer, column_inner = sch.split(spatial[-1], [None, nr])
    # one or two vectors of columns as one vector (LLVM splits it into registers; on AVX2 that ran
    # 1×1 convolutions up to 3× faster than unrolled single vectors); wider tiles (LLVM scalarizes
    # a vector of 48 floats) and the instruction's, single vectors unrolled
    whole = dot is None and tile.vectors <= 2
    column_vectors, lane_loop = (None, column_inner) if whole else sch.split(column_inner, [None, lanes])
    if dot is None:
        inner = [row_inner, *([] if whole else [column_vectors]), lane_loop]
    else:  # groups of reduction steps innermost, for the instruction
        reduction[-1:] = sch.split(reduction[-1], [None, dot.group])
        inner = [row_inner, column_vectors, lane_loop, reduction.pop()]
    # column blocks outermost: one block of weights (K × NR) stays in cache across all row tiles
    sch.reorder(column_outer, *spatial[:-2], row_outer, *reduction, *inner)
    widened = [p for p in sch.get_producers(block) if sch.get(p).name_hint == WIDENED_WEIGHT]
    if widened:  # weight-only: each column block's panel is widened once, into cache, for all its row tiles
        sch.parallel(column_outer)
        tile = sch.fuse(*spatial[:-2], row_outer) if spatial[:-2] else row_outer
        sch.compute_at(widened[0], column_outer)
        sch.vectorize(sch.get_loops(widened[0])[-1])
    elif _fits_in_cache(sch.get(block)):
        # weights that stay in cache anyway: rows outermost, so each thread takes a band of the
        # image (all its channels), the band the next layer's thread reads back from its own cache
        sch.reorder(*spatial[:-2], row_outer, column_outer)
        tile = sch.fuse(*spatial[:-2], row_outer, column_outer)
        sch.parallel(tile)
    else:
        tile = sch.fuse(column_outer, *spatial[:-2], row_outer)
        sch.parallel(tile)
    # TVM fetches every local-scope tile from the workspace allocator, once per tile, and puts small
    # global-scope buffers on the stack. For a short reduction (depthwise: 9 steps) that call costs
    # more than the reduction itself; for a long one the global tile is the slower, so it stays
    # local there. A dot-product instruction accumulates in the register tile: "local" whatever the
    # reduction's length.
    short = dot is None and _reduction_steps(sch.get(block)) <= SHORT_REDUCTION
    write_back = sch.cache_write(block, 0, "global" if short else "local")
    sch.reverse_compute_at(write_back, tile)
    _inline_epilogues(sch, write_back)
    sch.unroll(row_inner)
    if column_vectors is not None:
        sch.unroll(column_vectors)
    if dot is None:
        sch.vectorize(lane_loop)
    init = sch.decompose_reduction(block, reduction[0])
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    if dot is not None:  # tensorized once every block is scheduled: a tensorized schedule cannot be copied
        sch.annotate(lane_loop, TENSORIZE, dot.name)
    write_loops = sch.get_loops(write_back)
    fused = sch.fuse(*write_loops[2 if widened else 1 :])  # the loops below the tile
    _, vector = sch.split(fused, [None, lanes])
    sch.vectorize(vector)
    return True


KNOWN_MULTIPLES = (16, 8, 4, 2)  # what a dynamic extent may be known to be a multiple of


def _known_multiple(extent) -> int | None:
    """A static extent, or for a dynamic one a multiple of it TVM can prove (a prompt padded to 16
    tokens: 16·n rows, and as many key columns in its attention scores), which the register tile
    then divides; None when nothing is known (no column tiles; one-row tiles)."""
    known = static_extent(extent)
    if known is not None:
        return known
    analyzer = Analyzer()
    return next((m for m in KNOWN_MULTIPLES if analyzer.can_prove_equal(tirx.floormod(extent, m), 0)), None)


def row_reduction(sch: s_tir.Schedule, info: SBlockInfo, unit: VectorUnit) -> bool:
    """A reduction over its operand's contiguous innermost axis (a row's max or sum, layer norm's
    moments, softmax's): each row reduced into one vector of partial results (rfactor), then across
    the vector's lanes; rows in parallel. The fallback reduced one element at a time."""
    block = sch.get(info.block_rv)
    if not info.is_reduction() or "O" in info.dom_kind() or _columns_read_contiguously(block):
        return False
    spatial, reduction = _split_loops(sch, info)
    steps = static_extent(sch.get(reduction[-1]).extent) if reduction else None
    lanes = column_lanes(steps, unit.lanes) if steps else None
    if not spatial or lanes is None or not _reduces_innermost_axis(block):
        return False
    _, lane = sch.split(reduction[-1], [None, lanes])
    partial = sch.rfactor(lane, factor_axis=len(block.writes[0].region))  # under the same loops: rows..., steps, lane
    loops = sch.get_loops(partial)
    sch.vectorize(loops[-1])  # before decomposing: only a block with its init is a reduction block
    parallel = _parallel_prefix(sch, loops[: len(spatial)])
    outer = sch.fuse(*parallel) if len(parallel) > 1 else parallel[0]
    sch.parallel(outer)
    init = sch.decompose_reduction(partial, sch.get_loops(partial)[-2])
    sch.vectorize(sch.get_loops(init)[-1])
    try:  # the lanes' final reduction beside its rows' partial results, in the same parallel loop
        sch.reverse_compute_at(info.block_rv, outer)
    except SCHEDULE_FAILURES:
        pass  # a loop of its own: correct, one more pass over the (small) partial results
    return True


def _reduces_innermost_axis(block) -> bool:
    """Whether some operand's innermost index is the block's innermost reduction variable."""
    reduced = [var.var for var in block.iter_vars if var.iter_type == tirx.IterVar.CommReduce]
    return bool(reduced) and any(
        len(region.region) > 0 and any(used.same_as(reduced[-1]) for used in tirx.analysis.undefined_vars(region.region[-1].min))
        for region in block.reads
    )


def winograd_transform(sch: s_tir.Schedule, info: SBlockInfo, unit: VectorUnit) -> bool:
    """`winograd.py`'s input and output transforms: tiles in parallel, the positions within a tile
    unrolled (so each position's select of coefficients folds to its few additions), channels
    vectorized; the first half of each transform (`INPUT_ROWS`, `OUTPUT_COLUMNS`) computed per
    tile and vector of channels, in registers, right before the second half reads it."""
    name = sch.get(info.block_rv).name_hint
    if name not in (INPUT_TRANSFORM, OUTPUT_TRANSFORM):
        return False
    if name == OUTPUT_TRANSFORM:  # with its epilogue (bias, activation), which makes new loops
        _inline_epilogues(sch, info.block_rv)
    loops = sch.get_loops(info.block_rv)
    channels = static_extent(sch.get(loops[-1]).extent)
    lanes = column_lanes(channels, unit.lanes)
    if lanes is None:
        return False
    channel_outer, channel_inner = sch.split(loops[-1], [None, lanes])
    if name == INPUT_TRANSFORM:  # (position, tile, channel)
        position, tile = loops[0], loops[1]
        sch.reorder(tile, channel_outer, position, channel_inner)
        sch.parallel(tile)
        sch.unroll(position)
    else:  # ([n,] h, w, channel; TVM drops a batch of 1): h and w in pairs, one output tile
        *batch, height, width = loops[:-1]
        tile_h, row = sch.split(height, [None, TILE])
        tile_w, column = sch.split(width, [None, TILE])
        sch.reorder(*batch, tile_h, tile_w, channel_outer, row, column, channel_inner)
        sch.parallel(sch.fuse(*batch, tile_h, tile_w))
        sch.unroll(row)
        sch.unroll(column)
    sch.vectorize(channel_inner)
    first_half = next(p for p in sch.get_producers(info.block_rv) if sch.get(p).name_hint in (INPUT_ROWS, OUTPUT_COLUMNS))
    sch.compute_at(first_half, channel_outer)
    sch.set_scope(first_half, 0, "local")
    *coefficients, vector = sch.get_loops(first_half)[-3:]
    for loop in coefficients:
        sch.unroll(loop)
    sch.vectorize(vector)
    return True


# parallel iterations the fallback asks for before it keeps inner loops serial (a few per core of
# the largest CPUs Kiln targets; TVM's pool hands each thread a contiguous range)
PARALLEL_GRAIN = 64


def _parallel_prefix(sch: s_tir.Schedule, loops: list) -> list:
    """The outer loops whose iterations reach PARALLEL_GRAIN (an unknown extent counts as enough)."""
    count = 1
    for depth, loop in enumerate(loops, 1):
        count *= static_extent(sch.get(loop).extent) or PARALLEL_GRAIN
        if count >= PARALLEL_GRAIN:
            return loops[:depth]
    return loops


def parallel_vectorize(sch: s_tir.Schedule, info: SBlockInfo, unit: VectorUnit) -> bool:
    """Fallback: spatial loops outside reductions, outer ones in parallel, the innermost spatial
    loop vectorized when its extent is a multiple of the vector width. Only as many outer loops
    run in parallel as give each core work (`_parallel_prefix`); inner ones stay serial loops,
    which is cheaper than recovering every index from one fused counter by division (the input
    transpose NCHW -> NHWC, 3 channels: 107 -> 47 us)."""
    if "O" in info.dom_kind() or not info.dom_kind():
        return False
    spatial, reduction = _split_loops(sch, info)
    if not spatial:
        return False
    vector = None
    extent = static_extent(sch.get(spatial[-1]).extent)
    lanes = column_lanes(extent, unit.lanes) if extent is not None else None
    if lanes is not None:
        outer, vector = sch.split(spatial[-1], [None, lanes])
        spatial[-1] = outer
        sch.reorder(*spatial, *reduction, vector)
    parallel = _parallel_prefix(sch, spatial)
    sch.parallel(sch.fuse(*parallel) if len(parallel) > 1 else parallel[0])
    if vector is not None:
        sch.vectorize(vector)  # before decomposing: only a block with its init is a reduction block
    if reduction:
        sch.decompose_reduction(info.block_rv, reduction[0])
    return True


BLOCK_STRATEGIES: list[Strategy] = [amx_tile_reduction, integer_dot_reduction, register_tiled_reduction, row_reduction, winograd_transform, parallel_vectorize]


SHORT_REDUCTION = 64
WINOGRAD_BLOCKS = (INPUT_ROWS, INPUT_TRANSFORM, OUTPUT_COLUMNS, OUTPUT_TRANSFORM)
PLACED_BY_CONSUMER = (WIDENED_WEIGHT, INPUT_ROWS, OUTPUT_COLUMNS)


def _reduction_steps(block) -> int:
    steps = 1
    for var in block.iter_vars:
        if var.iter_type == tirx.IterVar.CommReduce:
            steps *= static_extent(var.dom.extent) or SHORT_REDUCTION + 1
    return steps


def _inline_elementwise(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> None:
    """Inline elementwise blocks into their consumers, except producers of long reductions: a padded
    input is cheaper computed once than re-tested at every step of a convolution's reduction, while
    for a short one (depthwise: 9 steps) the extra pass over memory costs more than the tests.
    Dot-product instructions load their operands from memory whatever the reduction's length (an
    RGB stem's 36 steps, padding inlined, fails to tensorize and runs as plain integer loops)."""
    for info in infos:
        feeds_long_reduction = any(
            _reduction_steps(sch.get(consumer)) > SHORT_REDUCTION or sch.get(consumer).name_hint in DOT_BLOCKS
            for consumer in sch.get_consumers(info.block_rv)
        )
        transform = sch.get(info.block_rv).name_hint in WINOGRAD_BLOCKS  # scheduled whole, epilogue inside
        if not info.is_reduction() and not feeds_long_reduction and not transform and sch.get_consumers(info.block_rv):
            try:
                sch.compute_inline(info.block_rv)
            except SCHEDULE_FAILURES:
                pass


def _placed_by_consumer(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
    """Whether an earlier strategy put this block inside its own parallel loop (or inlined it away)."""
    try:
        loops = sch.get_loops(info.block_rv)
    except SCHEDULE_FAILURES:
        return False  # folded into an earlier block: the strategies below skip it as before
    return bool(loops) and sch.get(loops[0]).kind == tirx.ForKind.PARALLEL


class CPUSchedule(ScheduleRule):
    """Schedules every block of a CPU function with the first strategy that applies to it."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        _inline_elementwise(sch, infos)
        infos = normalize_prim_func(sch) or []
        unit = vector_unit(target)
        # blocks their consumer's strategy places inside its own loops last (weight-only panels, the
        # first halves of Winograd's transforms)
        infos.sort(key=lambda info: sch.get(info.block_rv).name_hint in PLACED_BY_CONSUMER)
        for info in infos:
            if _placed_by_consumer(sch, info):
                continue
            for strategy in BLOCK_STRATEGIES:
                # each strategy works on a fork and is kept only if it succeeds whole
                trial = sch.copy()
                try:
                    if strategy(trial, info, unit):
                        sch = _named(trial, info, strategy)
                        break
                except SCHEDULE_FAILURES:
                    continue  # e.g. the block was folded into an earlier block's epilogue
        _tensorize_marked(sch)
        return sch


STRATEGY_ANNOTATION = "kiln.strategy"  # which strategy scheduled a block: cm.profile() names it


def _named(sch: s_tir.Schedule, info, strategy: Strategy) -> s_tir.Schedule:
    """`sch` with the block `strategy` scheduled annotated by the strategy's name, where the block
    is still there to annotate (a strategy may have folded it into another)."""
    try:
        sch.annotate(info.block_rv, STRATEGY_ANNOTATION, strategy.__name__)
    except SCHEDULE_FAILURES:
        pass
    return sch


CPU_RULES: list[ScheduleRule] = [CPUSchedule()]
