"""Intel AMX tile kernels (int8 and bf16), as TIR tensor intrinsics (one per layer shape).

AMX has eight tile registers of up to 16 rows × 64 bytes. `tdpbusd` adds a 16 × 64 uint8 tile
times a 64 × 16 int8 tile into a 16 × 16 int32 tile (16,384 multiply-adds per instruction, against
64 for a 512-bit `vpdpbusd`); `tdpbf16ps` a 16 × 32 bfloat16 tile times a 32 × 16 one into 16 × 16
float32. The right operand is "VNNI-interleaved" (rows of groups of 4 int8 or 2 bf16 steps × 16
columns): exactly a 16-column slice of the panels `pack_weights.py` packs, so AMX and vpdpbusd
share one weight layout.

One kernel computes a tile of 16 output rows (a matmul's rows, a stride-1 convolution's
consecutive output pixels) × one packed panel (up to 4 × 16 columns, accumulators tmm0-3) over a
whole reduction of `steps` (a multiple of one tile row, 64 bytes): per tile row of steps it loads
the activation tile once (tmm6) and each 16-column weight tile (tmm4 and tmm5 in turn) into a dot
product with its accumulator. The
accumulators are loaded from and stored to the output tile around that loop (zeroed by the
schedule's init block; a convolution does so once per kernel tap).

The operands are passed as raw pointers into their buffers' data (`_pointer`), not `address_of`
an element: a raw use of a buffer's data keeps TVM's bf16 legalization from widening an intermediate bf16 buffer (a convolution's
padded input) to float32 behind the kernel's back; the tiles read bf16 bytes.

The kernel writes its own tile configuration (`ldtilecfg`) first, since the configuration is
per thread and the schedule's parallel loop may run any tile on any thread. Linux grants a process
the tile state only on request (`bundle_runner.request_amx_state`, called before the first run).
"""

from __future__ import annotations

from tvm import DataType
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from kiln.backends.tvm.cpu.dot_instructions import DotInstruction

TILE_ROWS = 16  # the most rows a tile has (weight tiles: always 16 rows of grouped steps)
MIN_TILE_ROWS = 7  # fewer output rows per tile leave too much of each instruction idle: VNNI instead
TILE_ROW_BYTES = 64  # bytes of one tile row
TILE_COLUMNS = 16  # int32/float32 columns of one accumulator tile (64 bytes)
MAX_ACCUMULATORS = 4  # tmm0-3: one panel of up to 64 columns
# the weight tiles alternate between two registers: tiles are not renamed, so a load into the
# register the previous dot product still reads would wait for it to finish
WEIGHT_TILES, ACTIVATION_TILE = (4, 5), 6  # weight tile of accumulator t: 4 + t % 2
CONFIG_BYTES = 64  # ldtilecfg's memory operand: palette, then bytes per row and rows per tile


def tile_steps(dot: DotInstruction) -> int:
    """Reduction steps in one activation tile row (64 bytes): 64 int8, 32 bf16."""
    return TILE_ROW_BYTES * 8 // DataType(dot.activation).bits


def tile_rows(rows: int | None) -> int | None:
    """Output rows per tile for a layer of `rows` rows (a matmul's rows, a convolution's output
    width): 16, or the largest divisor of `rows` from 15 down to MIN_TILE_ROWS (a 56-pixel row in 4
    tiles of 14), so tiles cover the rows exactly; None where no such divisor exists."""
    if rows is None:
        return None
    return next((height for height in range(TILE_ROWS, MIN_TILE_ROWS - 1, -1) if rows % height == 0), None)


def tile_intrinsic(dot: DotInstruction, rows: int, columns: int, steps: int) -> str:
    """The name of the registered kernel for a `rows` × `columns` tile over `steps` reduction steps."""
    name = f"{dot.name}_{rows}x{columns}x{steps}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, tile_description(dot, rows, columns, steps), _implementation(dot, rows, columns, steps))
    return name


def tile_description(dot: DotInstruction, rows: int, columns: int, steps: int):
    """What one kernel computes: C[rows, columns] += A[rows, steps] · B (panel rows of groups of steps)."""
    group, tiles = dot.group, columns // TILE_COLUMNS
    if columns % TILE_COLUMNS or tiles > MAX_ACCUMULATORS or steps % tile_steps(dot) or not 0 < rows <= TILE_ROWS:
        raise ValueError(f"no AMX kernel for a {rows} x {columns} tile over {steps} steps")

    @T.prim_func(s_tir=True)
    def description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (rows, steps), dot.activation, offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, (steps // group, columns, group), dot.weight, offset_factor=1, strides=[T.int32(), T.int32(), 1])
        C = T.match_buffer(c, (rows, columns), dot.accumulator, offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:columns], A[0:rows, 0:steps], B[0 : steps // group, 0:columns, 0:group])
            T.writes(C[0:rows, 0:columns])
            for m, n, k in T.grid(rows, columns, steps):
                with T.sblock("update"):
                    vm, vn, vk = T.axis.remap("SSR", [m, n, k])
                    C[vm, vn] = C[vm, vn] + dot.product(A[vm, vk], B[vk // group, vn, vk % group])

    return description


def _pointer(buffer, elements, element_bytes: int):
    """The address `elements` past the start of a (matched) buffer, from its data pointer."""
    return T.handle_add_byte_offset(buffer.data, (buffer.elem_offset + elements) * element_bytes)


def _implementation(dot: DotInstruction, rows: int, columns: int, steps: int):
    group, tiles, block_steps = dot.group, columns // TILE_COLUMNS, tile_steps(dot)
    element = DataType(dot.activation).bits // 8  # bytes per activation and weight element

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        row_a, row_b, column_b, row_c = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (rows, steps), dot.activation, offset_factor=1, strides=[row_a, 1])
        B = T.match_buffer(b, (steps // group, columns, group), dot.weight, offset_factor=1, strides=[row_b, column_b, 1])
        C = T.match_buffer(c, (rows, columns), dot.accumulator, offset_factor=1, strides=[row_c, 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:columns], A[0:rows, 0:steps], B[0 : steps // group, 0:columns, 0:group])
            T.writes(C[0:rows, 0:columns])
            config = T.alloc_buffer((CONFIG_BYTES,), "uint8", scope="local")
            for i in range(CONFIG_BYTES):
                config[i] = T.uint8(0)
            config[0] = T.uint8(1)  # palette 1: 8 tiles of up to 16 rows × 64 bytes
            for tile in range(8):  # every tile's rows are 64 bytes; weight tiles 16 rows, the others `rows`
                config[16 + 2 * tile] = T.uint8(TILE_ROW_BYTES)
                config[48 + tile] = T.uint8(rows)
            config[48 + WEIGHT_TILES[0]] = T.uint8(TILE_ROWS)
            config[48 + WEIGHT_TILES[1]] = T.uint8(TILE_ROWS)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", config.access_ptr("r")))
            for tile in T.unroll(tiles):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(tile),
                                              _pointer(C, tile * TILE_COLUMNS, 4), T.int64(row_c * 4)))
            for block in range(steps // block_steps):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(ACTIVATION_TILE),
                                              _pointer(A, block * block_steps, element), T.int64(row_a * element)))
                for tile in T.unroll(tiles):
                    # 16 groups of steps (rows of B) × 16 columns × one group (64 bytes), rows `row_b` elements apart
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.Cast("int8", WEIGHT_TILES[0] + tile % 2),
                        _pointer(B, block * (block_steps // group) * row_b + tile * TILE_COLUMNS * column_b, element),
                        T.int64(row_b * element)))
                    T.evaluate(T.call_llvm_intrin("void", dot.llvm_intrinsic, T.int8(tile), T.int8(ACTIVATION_TILE), T.Cast("int8", WEIGHT_TILES[0] + tile % 2)))
            for tile in T.unroll(tiles):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(tile),
                                              _pointer(C, tile * TILE_COLUMNS, 4), T.int64(row_c * 4)))

    return implementation
