"""The register tile of a reduction: how many output rows (MR) and vectors of output columns (NR)
stay in vector registers across the whole reduction.

One choice serves two places: `pack_weights.py` stores constant weights as panels NR columns wide,
and `schedules.py` tiles the reduction that reads them (or one without packed weights) with the
same NR, so each tile reads one panel front to back. Both ask `register_tile` with what they know
of the layer: its output columns, rows and reduction steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target
from tvm.target.codegen import llvm_get_cpu_features

from kiln.backends.targets import VectorUnit, vector_unit_of

# TVM puts a constant-size buffer below this on the stack and fetches a larger one from the workspace
# allocator, once per tile; a reduction of up to STACK_TILE_STEPS steps does not amortize that call
STACK_ALLOCATION_BYTES, STACK_TILE_STEPS = 1024, 256
FLOAT_BYTES = 4  # fp32 and int32 accumulators alike


def vector_unit(target: Target) -> VectorUnit:
    return vector_unit_of(llvm_get_cpu_features(target), str(target.attrs.get("mtriple", "")))


def vector_lanes(target: Target) -> int:
    """fp32 lanes of the widest SIMD register the target has."""
    return vector_unit(target).lanes


def column_lanes(channels: int, lanes: int) -> int | None:
    """The widest vector of `lanes` floats, or of a half or a quarter of it (down to 4), that
    divides `channels` (None if none does): on AVX-512, MobileNetV2's 24-channel layers take
    8-float vectors rather than no tiling at all."""
    while lanes >= 4:
        if channels % lanes == 0:
            return lanes
        lanes //= 2
    return None


def largest_divisor(n: int, limit: int) -> int:
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


@dataclass(frozen=True)
class RegisterTile:
    rows: int  # MR: output rows, unrolled
    vectors: int  # NR / lanes: vectors of output columns per row, unrolled
    lanes: int  # one vector, vectorized

    @property
    def columns(self) -> int:
        return self.vectors * self.lanes


# a core's multiply-add pipes, their latency in cycles and its vector load ports (AVX2/AVX-512
# cores and Neoverse alike, near enough to rank tiles): a tile runs at the slowest of the pipes, its
# dependency chains (one per accumulator) and its loads
FMA_PIPES, FMA_LATENCY, LOAD_PORTS = 2, 4, 2
# vectors per tile row: 3 for reductions over many rows (7 × 4 spilled on MobileNetV2's 7-row
# layers, 3× slower); a single row (a classifier's GEMV) needs more independent chains to hide the
# multiply-add latency, FMA_PIPES × FMA_LATENCY of them
MAX_VECTORS, MAX_SINGLE_ROW_VECTORS = 3, FMA_PIPES * FMA_LATENCY


def _multiply_adds_per_cycle(rows: int, vectors: int) -> float:
    accumulators, loads = rows * vectors, rows + vectors  # broadcasts of the input, weight vectors
    return min(FMA_PIPES, accumulators / FMA_LATENCY, LOAD_PORTS * accumulators / loads)


def register_tile(
    columns: int, rows: int | None, steps: int, unit: VectorUnit, lanes: int | None = None, vectors: int | None = None
) -> RegisterTile | None:
    """The tile with the highest estimated multiply-add rate (`_multiply_adds_per_cycle`); among
    equals, the one that loads the fewest vectors per multiply-add. None when no vector divides
    `columns`.

    Rows must divide evenly (a tail would cost a predicate in the innermost loop), so the row count
    decides the column width: BERT's 128 tokens take 8 rows × 3 vectors (24 accumulators, 11 loads
    per step) where 2 vectors allow 8 × 2 (16, 10); a GEMV's single row takes up to 8 vectors,
    independent chains of multiply-adds. `lanes`/`vectors` fix those (weights already packed, an
    instruction's vector width). Rows unknown at compile time (a dynamic batch) tile one
    row at a time."""
    lanes = lanes or column_lanes(columns, unit.lanes)
    if lanes is None or columns % lanes:
        return None
    best, best_key = None, None
    widest = (MAX_SINGLE_ROW_VECTORS if rows == 1 else MAX_VECTORS) if steps > STACK_TILE_STEPS else 2
    for count in [vectors] if vectors else range(1, min(columns // lanes, widest) + 1):
        if (columns // lanes) % count:
            continue
        mr = max(unit.accumulators // count, 1)
        if count > 2:
            # its weight vectors and the broadcast need registers too; 1- and 2-vector tiles keep
            # the budget measured on AVX2 (7 × 2: FMAs take the weights as memory operands)
            mr = max(min(mr, (unit.registers - 1 - count) // count), 1)
        if steps <= STACK_TILE_STEPS:
            # as many rows as keep the tile on the stack (a workspace allocation per tile costs a
            # short reduction more than the smaller tile does); longer reductions amortize the
            # allocation and keep the larger tile
            mr = max(min(mr, (STACK_ALLOCATION_BYTES - 1) // (count * lanes * FLOAT_BYTES)), 1)
        mr = largest_divisor(rows, mr) if rows is not None else 1
        key = (_multiply_adds_per_cycle(mr, count), mr * count / (mr + count))
        if best_key is None or key > best_key:
            best, best_key = RegisterTile(mr, count, lanes), key
    return best
