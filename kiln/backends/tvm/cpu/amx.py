"""Intel AMX tile kernels (int8 and bf16), as TIR tensor intrinsics (one per layer shape).

AMX has eight tile registers of up to 16 rows × 64 bytes. `tdpbusd` adds a 16 × 64 uint8 tile
times a 64 × 16 int8 tile into a 16 × 16 int32 tile (16,384 multiply-adds per instruction, against
64 for a 512-bit `vpdpbusd`); `tdpbf16ps` a 16 × 32 bfloat16 tile times a 32 × 16 one into 16 × 16
float32. The right operand is "VNNI-interleaved" (rows of groups of 4 int8 or 2 bf16 steps × 16
columns): exactly a 16-column slice of the panels `pack_weights.py` packs, so AMX and vpdpbusd
share one weight layout.

One kernel computes a block of output rows (a matmul's rows, a convolution's output pixels along a
row, one stride apart) × one packed panel (16-64 columns) over a whole reduction of `steps` (a
multiple of one tile row, 64 bytes), in four accumulator tiles (tmm0-3): one row tile × four
column tiles, or two row tiles × two column tiles per pass over the panel (`tile_blocking`). Per
tile row of steps it loads the activation tiles (tmm4, tmm5) and each weight tile (tmm6, tmm7 in
turn: tiles are not renamed, so a load into the register the last dot product still reads would
wait for it; measured: 12 against 13.6 cycles per instruction) into a dot product with each
accumulator. Two row tiles read each weight tile twice, halving the weight traffic from L2 (a
16 × 64-byte tile per instruction would need 64 bytes a cycle from it); on the Xeon measured that
was about even with one row tile on BERT's linears, where the per-call costs below dominate. The
accumulators are loaded from and stored to the output around that loop (zeroed by the schedule's
init block; a convolution does so once per kernel tap, a chunked reduction once per chunk).

The operands are passed as raw pointers into their buffers' data (`_pointer`), not `address_of`
an element: a raw use of a buffer's data keeps TVM's bf16 legalization from widening an
intermediate bf16 buffer (a convolution's padded input) to float32 behind the kernel's back; the
tiles read bf16 bytes.

The kernel writes its own tile configuration (`ldtilecfg`) first, since the configuration is
per thread and the schedule's parallel loop may run any tile on any thread; that costs about 165
cycles a call (10 instructions' worth), which is why kernels cover whole reductions or L1-sized
chunks of them. It puts back the configuration it found (`sttilecfg` first, `ldtilecfg` of it
last; the init state if there was none): other libraries in the process keep theirs per thread
across calls (ONNX Runtime's MLAS int8 kernels do, and hit an illegal instruction, #UD, on tiles
shaped by Kiln's configuration). Linux grants a process
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
ACCUMULATORS = 4  # tmm0-3
ACTIVATION_TILES, WEIGHT_TILES = (4, 5), (6, 7)
L1_WEIGHT_BYTES = 32 * 1024  # the weights a matmul keeps in L1 for all its row tiles (`weight_chunk`)
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


def tile_blocking(rows: int | None, columns: int) -> tuple[int, int] | None:
    """(rows per tile, row tiles per kernel: 1 or 2) for `rows` output rows and a panel of
    `columns`: the most rows per weight tile loaded (each load is what bounds the kernel), then the
    fewest instructions (each takes the same time whatever its rows). Two row tiles need an even
    number of column tiles (two per pass)."""
    if rows is None:
        return None
    counts = (1, 2) if columns // TILE_COLUMNS % 2 == 0 else (1,)
    fits = [(height, count) for count in counts for height in range(TILE_ROWS, MIN_TILE_ROWS - 1, -1) if rows % (height * count) == 0]
    return max(fits, key=lambda fit: (fit[0] * fit[1], -fit[1]), default=None)


def weight_chunk(dot: DotInstruction, steps: int, columns: int) -> int:
    """The longest run of reduction steps (whole tile rows, dividing `steps`) whose slice of a
    `columns`-wide weight panel fits in L1_WEIGHT_BYTES; `steps` itself if it does."""
    element = DataType(dot.weight).bits // 8
    fitting = [chunk for chunk in range(tile_steps(dot), steps + 1, tile_steps(dot))
               if steps % chunk == 0 and chunk * columns * element <= L1_WEIGHT_BYTES]
    return max(fitting, default=tile_steps(dot))


def tile_intrinsic(dot: DotInstruction, height: int, row_tiles: int, columns: int, steps: int, taps: tuple[int, int] = (1, 1),
                   row_blocks: int = 1) -> str:
    """The name of the registered kernel for `row_blocks` blocks of `row_tiles` tiles of `height`
    rows × `columns` over `steps` reduction steps, for each of a stride-1 convolution's `taps`
    (kernel rows × columns). Several row blocks in one call share its tile configuration."""
    name = (f"{dot.name}_{row_tiles}x{height}x{columns}x{steps}" + ("" if taps == (1, 1) else f"_taps{taps[0]}x{taps[1]}")
            + ("" if row_blocks == 1 else f"_blocks{row_blocks}"))
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, tile_description(dot, height * row_tiles * row_blocks, columns, steps, taps),
                              _implementation(dot, height, row_tiles, columns, steps, taps, row_blocks))
    return name


def _operand_shapes(dot: DotInstruction, rows: int, columns: int, steps: int, taps: tuple[int, int]):
    """The kernel's A and B: [rows, steps] and the panel [steps/G, columns, G]; over taps, the
    input rows a tap reads [kernel rows, rows + kernel columns − 1, steps] and the panel's taps
    [kernel rows, kernel columns, steps/G, columns, G]."""
    if taps == (1, 1):
        return (rows, steps), (steps // dot.group, columns, dot.group)
    return (taps[0], rows + taps[1] - 1, steps), (*taps, steps // dot.group, columns, dot.group)


def _strides(shape: tuple[int, ...]) -> list:
    return [T.int32() for _ in shape[:-1]] + [1]


def _whole(buffer):
    return buffer[tuple(slice(0, extent) for extent in buffer.shape)]


def tile_description(dot: DotInstruction, rows: int, columns: int, steps: int, taps: tuple[int, int] = (1, 1)):
    """What one kernel computes: C[rows, columns] += A[rows, steps] · B (panel rows of groups of
    steps); over taps, C[m, n] += Σ A[kh, m + kw, k] · B[kh, kw, k/G, n, k%G]."""
    group = dot.group
    if columns % TILE_COLUMNS or columns > ACCUMULATORS * TILE_COLUMNS or steps % tile_steps(dot) or rows <= 0:
        raise ValueError(f"no AMX kernel for a {rows} x {columns} tile over {steps} steps")
    a_shape, b_shape = _operand_shapes(dot, rows, columns, steps, taps)

    if taps == (1, 1):
        @T.prim_func(s_tir=True)
        def description(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, dot.activation, offset_factor=1, strides=_strides(a_shape))
            B = T.match_buffer(b, b_shape, dot.weight, offset_factor=1, strides=_strides(b_shape))
            C = T.match_buffer(c, (rows, columns), dot.accumulator, offset_factor=1, strides=[T.int32(), 1])
            with T.sblock("root"):
                T.reads(_whole(C), _whole(A), _whole(B))
                T.writes(_whole(C))
                for m, n, k in T.grid(rows, columns, steps):
                    with T.sblock("update"):
                        vm, vn, vk = T.axis.remap("SSR", [m, n, k])
                        C[vm, vn] = C[vm, vn] + dot.product(A[vm, vk], B[vk // group, vn, vk % group])

        return description

    @T.prim_func(s_tir=True)
    def tap_description(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, dot.activation, offset_factor=1, strides=_strides(a_shape))
        B = T.match_buffer(b, b_shape, dot.weight, offset_factor=1, strides=_strides(b_shape))
        C = T.match_buffer(c, (rows, columns), dot.accumulator, offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(_whole(C), _whole(A), _whole(B))
            T.writes(_whole(C))
            for r, q, m, n, k in T.grid(taps[0], taps[1], rows, columns, steps):
                with T.sblock("update"):
                    vm, vn, vr, vq, vk = T.axis.remap("SSRRR", [m, n, r, q, k])
                    C[vm, vn] = C[vm, vn] + dot.product(A[vr, vm + vq, vk], B[vr, vq, vk // group, vn, vk % group])

    return tap_description


def _pointer(buffer, elements, element_bytes: int):
    """The address `elements` past the start of a (matched) buffer, from its data pointer."""
    return T.handle_add_byte_offset(buffer.data, (buffer.elem_offset + elements) * element_bytes)


def _activation_offset(A, tap_row, tap_column, row):
    """Elements from A's start to input row `row` (plus the tap's column) of kernel row `tap_row`."""
    if len(A.shape) == 2:
        return row * A.strides[0]
    return tap_row * A.strides[0] + (row + tap_column) * A.strides[1]


def _weight_offset(B, tap_row, tap_column):
    """Elements from B's start to a tap's panel."""
    return 0 if len(B.shape) == 3 else tap_row * B.strides[0] + tap_column * B.strides[1]


def _implementation(dot: DotInstruction, height: int, row_tiles: int, columns: int, steps: int, taps: tuple[int, int], row_blocks: int):
    group, block_steps = dot.group, tile_steps(dot)
    element = DataType(dot.activation).bits // 8  # bytes per activation and weight element
    per_pass = min(ACCUMULATORS // row_tiles, columns // TILE_COLUMNS)  # column tiles per pass
    passes, block_rows = columns // TILE_COLUMNS // per_pass, height * row_tiles
    rows = block_rows * row_blocks
    a_shape, b_shape = _operand_shapes(dot, rows, columns, steps, taps)

    @T.prim_func(s_tir=True)
    def implementation(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, dot.activation, offset_factor=1, strides=_strides(a_shape))
        B = T.match_buffer(b, b_shape, dot.weight, offset_factor=1, strides=_strides(b_shape))
        C = T.match_buffer(c, (rows, columns), dot.accumulator, offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(_whole(C), _whole(A), _whole(B))
            T.writes(_whole(C))
            config = T.alloc_buffer((CONFIG_BYTES,), "uint8", scope="local")
            for i in range(CONFIG_BYTES):
                config[i] = T.uint8(0)
            config[0] = T.uint8(1)  # palette 1: 8 tiles of up to 16 rows × 64 bytes
            for tile in range(8):  # every tile's rows are 64 bytes; weight tiles 16 rows, the others `height`
                config[16 + 2 * tile] = T.uint8(TILE_ROW_BYTES)
                config[48 + tile] = T.uint8(height)
            config[48 + WEIGHT_TILES[0]] = T.uint8(TILE_ROWS)
            config[48 + WEIGHT_TILES[1]] = T.uint8(TILE_ROWS)
            callers = T.alloc_buffer((CONFIG_BYTES,), "uint8", scope="local")  # the configuration found, restored at the end
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sttilecfg", callers.access_ptr("w")))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", config.access_ptr("r")))
            for row_block, step in T.grid(row_blocks, passes):
                for r in T.unroll(row_tiles):  # accumulator r·per_pass + j: row tile r, column tile j of this pass
                    for j in T.unroll(per_pass):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("int8", r * per_pass + j),
                                                      _pointer(C, (row_block * block_rows + r * height) * C.strides[0] + (step * per_pass + j) * TILE_COLUMNS, 4),
                                                      T.int64(C.strides[0] * 4)))
                for tap_row, tap_column, block in T.grid(taps[0], taps[1], steps // block_steps):
                    for r in T.unroll(row_tiles):
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.x86.tileloadd64", T.Cast("int8", ACTIVATION_TILES[0] + r),
                            _pointer(A, _activation_offset(A, tap_row, tap_column, row_block * block_rows + r * height) + block * block_steps, element),
                            T.int64(A.strides[len(a_shape) - 2] * element)))
                    for j in T.unroll(per_pass):
                        # 16 groups of steps (rows of B) × 16 columns × one group (64 bytes), rows B.strides[-3] elements apart
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.x86.tileloadd64", T.Cast("int8", WEIGHT_TILES[0] + j % 2),
                            _pointer(B, _weight_offset(B, tap_row, tap_column) + block * (block_steps // group) * B.strides[len(b_shape) - 3]
                                     + (step * per_pass + j) * TILE_COLUMNS * B.strides[len(b_shape) - 2], element),
                            T.int64(B.strides[len(b_shape) - 3] * element)))
                        for r in T.unroll(row_tiles):
                            T.evaluate(T.call_llvm_intrin("void", dot.llvm_intrinsic, T.Cast("int8", r * per_pass + j),
                                                          T.Cast("int8", ACTIVATION_TILES[0] + r), T.Cast("int8", WEIGHT_TILES[0] + j % 2)))
                for r in T.unroll(row_tiles):
                    for j in T.unroll(per_pass):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.Cast("int8", r * per_pass + j),
                                                      _pointer(C, (row_block * block_rows + r * height) * C.strides[0] + (step * per_pass + j) * TILE_COLUMNS, 4),
                                                      T.int64(C.strides[0] * 4)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", callers.access_ptr("r")))

    return implementation
