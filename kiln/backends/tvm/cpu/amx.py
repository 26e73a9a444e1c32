"""Intel AMX int8 tile kernels, as TIR tensor intrinsics (one per layer shape).

AMX has eight tile registers of up to 16 rows × 64 bytes and `tdpbusd`, which adds a 16 × 64
uint8 tile times a 64 × 16 int8 tile into a 16 × 16 int32 tile: 16,384 multiply-adds per
instruction, against 64 for a 512-bit `vpdpbusd`. The int8 tile it reads as its right operand is
"VNNI-interleaved" (16 rows of K/4 groups × 16 columns × 4 steps): exactly a 16-column slice of
the panels `pack_weights.py` packs for vpdpbusd, so both instructions share one weight layout.

One kernel computes a tile of 16 output rows (a matmul's rows, a stride-1 convolution's
consecutive output pixels) × one packed panel (up to 4 × 16 columns, accumulators tmm0-3) over a
whole reduction of `steps` (a multiple of 64): per 64 steps it loads the activation tile once
(tmm6) and each 16-column weight tile (tmm7) into a dot product with its accumulator. The
accumulators are loaded from and stored to the output tile around that loop (zeroed by the
schedule's init block; a convolution does so once per kernel tap).

The kernel writes its own tile configuration (`ldtilecfg`) first, since the configuration is
per thread and the schedule's parallel loop may run any tile on any thread. Linux grants a process
the tile state only on request (`bundle_runner.request_amx_state`, called before the first run).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

TILE_ROWS = 16  # rows of every tile
TILE_STEPS = 64  # uint8 reduction steps of one activation tile row (64 bytes)
TILE_COLUMNS = 16  # int32 columns of one accumulator tile (64 bytes)
ACTIVATION_TILE, WEIGHT_TILE = 6, 7  # the tile registers after the (up to 6) accumulators
CONFIG_BYTES = 64  # ldtilecfg's memory operand: palette, then bytes per row and rows per tile


def tile_intrinsic(columns: int, steps: int) -> str:
    """The name of the registered kernel for a 16 × `columns` tile over `steps` reduction steps."""
    name = f"kiln_amx_tdpbusd_16x{columns}x{steps}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, tile_description(columns, steps), _implementation(columns, steps))
    return name


def tile_description(columns: int, steps: int):
    """What one kernel computes: C[16, columns] += A[16, steps] · B (panel rows of 4-step groups)."""
    groups, tiles = steps // 4, columns // TILE_COLUMNS
    if columns % TILE_COLUMNS or tiles > ACTIVATION_TILE or steps % TILE_STEPS:
        raise ValueError(f"no AMX kernel for a 16 x {columns} tile over {steps} steps")

    @T.prim_func(s_tir=True)
    def description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (TILE_ROWS, steps), "uint8", offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, (groups, columns, 4), "int8", offset_factor=1, strides=[T.int32(), T.int32(), 1])
        C = T.match_buffer(c, (TILE_ROWS, columns), "int32", offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:TILE_ROWS, 0:columns], A[0:TILE_ROWS, 0:steps], B[0:groups, 0:columns, 0:4])
            T.writes(C[0:TILE_ROWS, 0:columns])
            for m, n, k in T.grid(TILE_ROWS, columns, steps):
                with T.sblock("update"):
                    vm, vn, vk = T.axis.remap("SSR", [m, n, k])
                    C[vm, vn] = C[vm, vn] + T.cast(A[vm, vk], "int32") * T.cast(B[vk // 4, vn, vk % 4], "int32")

    return description


def _implementation(columns: int, steps: int):
    groups, tiles = steps // 4, columns // TILE_COLUMNS

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        row_a, row_b, column_b, row_c = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (TILE_ROWS, steps), "uint8", offset_factor=1, strides=[row_a, 1])
        B = T.match_buffer(b, (groups, columns, 4), "int8", offset_factor=1, strides=[row_b, column_b, 1])
        C = T.match_buffer(c, (TILE_ROWS, columns), "int32", offset_factor=1, strides=[row_c, 1])
        with T.sblock("root"):
            T.reads(C[0:TILE_ROWS, 0:columns], A[0:TILE_ROWS, 0:steps], B[0:groups, 0:columns, 0:4])
            T.writes(C[0:TILE_ROWS, 0:columns])
            config = T.alloc_buffer((CONFIG_BYTES,), "uint8", scope="local")
            for i in range(CONFIG_BYTES):
                config[i] = T.uint8(0)
            config[0] = T.uint8(1)  # palette 1: 8 tiles of up to 16 rows × 64 bytes
            for tile in range(8):  # every tile used is 16 rows of 64 bytes
                config[16 + 2 * tile] = T.uint8(64)
                config[48 + tile] = T.uint8(TILE_ROWS)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", config.access_ptr("r")))
            for tile in T.unroll(tiles):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(tile),
                                              C.access_ptr("r", offset=tile * TILE_COLUMNS), T.int64(row_c * 4)))
            for block in range(steps // TILE_STEPS):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(ACTIVATION_TILE),
                                              A.access_ptr("r", offset=block * TILE_STEPS), T.int64(row_a)))
                for tile in T.unroll(tiles):
                    # 16 groups of 4 steps (rows of B) × 16 columns × 4 bytes, rows `row_b` bytes apart
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.int8(WEIGHT_TILE),
                        B.access_ptr("r", offset=block * (TILE_STEPS // 4) * row_b + tile * TILE_COLUMNS * column_b),
                        T.int64(row_b)))
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.int8(tile), T.int8(ACTIVATION_TILE), T.int8(WEIGHT_TILE)))
            for tile in T.unroll(tiles):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(tile),
                                              C.access_ptr("w", offset=tile * TILE_COLUMNS), T.int64(row_c * 4)))

    return implementation
