"""Every integer kernel path equals its integer IR exactly, on odd shapes; a path this CPU lacks
is compile-tested: its instruction appears in the generated assembly.

Each path is selected by the target's CPU: vpmaddwd by an AVX2-only CPU (haswell), vpdpbusd by
one with AVX-512 VNNI (the host where it has VNNI, else cascadelake, built but not run here),
ARM sdot by the Raspberry Pi 5's Cortex-A76 (run on the emulated aarch64 board), AMX tdpbusd by
a Sapphire Rapids Xeon (run where the host has AMX; elsewhere its tiles' memory walk runs in plain
TIR through the same schedule)."""

from __future__ import annotations

import re

import pytest
import torch
import tvm
from torch import nn
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

import kiln
from kiln.backends.targets import host_features, resolve_target
from kiln.backends.tvm.cpu import amx
from kiln.backends.tvm.cpu.dot_instructions import AMX_BF16, AMX_INT8, ARM_SDOT, AVX2_VPMADDWD, AVX512_VNNI, DotInstruction, integer_dots
from tests.conftest import assert_matches

PATHS = {
    AVX512_VNNI.mnemonic: (AVX512_VNNI, "cascadelake"),
    AVX2_VPMADDWD.mnemonic: (AVX2_VPMADDWD, "haswell"),
}


def target_for(dot: DotInstruction, mcpu: str) -> dict:
    """The host where its CPU picks this instruction first, else a CPU that does."""
    host = resolve_target("llvm")
    if integer_dots(tvm.target.Target(host.tvm_target))[:1] == [dot]:
        return host.tvm_target
    return {"kind": "llvm", "mcpu": mcpu, "num-cores": 2}


def assembly(compiled: kiln.CompiledModule, form: str = "asm") -> str:
    """The generated code of every LLVM module: assembly, or with form "ll" LLVM IR."""
    library = compiled._built("assembly").library.mod
    pending, text = [library], []
    while pending:
        module = pending.pop()
        if module.kind == "llvm":
            text.append(module.inspect_source(form))
        pending.extend(module.imports)
    return "\n".join(text)


def check(compiled: kiln.CompiledModule, inputs: tuple[torch.Tensor, ...], dot: DotInstruction, board=None,
          tolerance: float = 1e-6, kernels: int | None = None) -> None:
    """Equal to the integer IR where this CPU (or the board) runs the code; the instruction in the
    assembly always; with `kernels`, that many layers on dot-product instructions (none left as
    plain integer loops)."""
    assert dot.mnemonic in assembly(compiled), f"no {dot.mnemonic} in the generated code"
    schedule = next(row for row in compiled.report.rows if row.name == "ScheduleCPU")
    assert re.search(rf"dot-product kernels on (.*, )?{dot.mnemonic} \d+", schedule.note), schedule.note  # the report says so
    if kernels is not None:
        counts = re.findall(r"(?:on |, )\w+ (\d+)", schedule.note.split("dot-product kernels", 1)[1])
        assert sum(map(int, counts)) == kernels, schedule.note
    if board is not None:
        compiled = compiled.to_remote(board.address)
    elif compiled.target.missing_cpu_features():
        with pytest.raises(kiln.TargetError, match="lacks"):
            compiled(*inputs)
        return
    with torch.no_grad():
        assert_matches(compiled(*inputs), compiled.graph.run(*inputs)[0], tolerance=tolerance)


# (in, out, kernel, stride, padding, groups, height, width, batch): tails of the instruction's
# lanes and group (out 24 and 40 on 16 lanes, 3 and 6 input channels on groups of 4), strides,
# padding with a non-zero zero point, groups, batch > 1
CONVOLUTIONS = {
    "stem_3_channels_stride2": (3, 32, 3, 2, 1, 1, 19, 17, 2),
    "odd_channels_out40_pad2": (6, 40, 5, 1, 2, 1, 11, 9, 1),
    "pointwise_out48_batch3": (32, 48, 1, 1, 0, 1, 7, 5, 3),
    "grouped": (16, 32, 3, 1, 1, 2, 9, 9, 1),
    "out24_on_16_lanes": (16, 24, 3, 1, 1, 1, 8, 8, 1),
    "strided_pointwise_64_steps": (64, 48, 1, 2, 0, 1, 14, 14, 1),  # a reduction as short as ResNet's 1×1 downsample
}


def static_int8_convolution(name: str, target) -> tuple[kiln.CompiledModule, torch.Tensor]:
    cin, cout, k, stride, pad, groups, h, w, batch = CONVOLUTIONS[name]
    # a first convolution on signed inputs (zero point ≠ 0, so padding and the correction matter),
    # then one on ReLU outputs (zero point 0)
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, groups=groups), nn.ReLU(), nn.Conv2d(cout, 32, 3, padding=1)).eval()
    x = torch.randn(batch, cin, h, w) + 0.5
    compiled = kiln.compile(model, (x,), target=target, quantize="int8", calibration=[(torch.randn_like(x) + 0.5,) for _ in range(2)])
    return compiled, x


def dynamic_int8_linear(rows: int, inner: int, outer: int, target) -> tuple[kiln.CompiledModule, torch.Tensor]:
    model = nn.Sequential(nn.Linear(inner, outer), nn.GELU(), nn.Linear(outer, 16)).eval()
    x = torch.randn(2, rows, inner)
    return kiln.compile(model, (x,), target=target, quantize="dynamic_int8"), x


LINEARS = [(1, 128, 32), (33, 768, 48), (7, 260, 80)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", CONVOLUTIONS)
def test_static_int8_convolutions(path, name):
    dot, mcpu = PATHS[path]
    compiled, x = static_int8_convolution(name, target_for(dot, mcpu))
    grouped = CONVOLUTIONS[name][5] > 1  # grouped convolutions stay plain integer code
    check(compiled, (x,), dot, kernels=1 if grouped else 2)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rows, inner, outer", LINEARS)
def test_dynamic_int8_linears(path, rows, inner, outer):
    dot, mcpu = PATHS[path]
    compiled, x = dynamic_int8_linear(rows, inner, outer, target_for(dot, mcpu))
    check(compiled, (x,), dot, kernels=2)


@pytest.mark.parametrize("name", CONVOLUTIONS)
def test_arm_dotprod_convolutions_on_the_board(aarch64_board, name):
    """Built for rpi5 (Cortex-A76, dotprod): sdot kernels, run on the emulated aarch64 board
    (qemu-user executes sdot), equal to the integer IR computed here."""
    compiled, x = static_int8_convolution(name, "rpi5")
    check(compiled, (x,), ARM_SDOT, aarch64_board)


@pytest.mark.parametrize("rows, inner, outer", LINEARS)
def test_arm_dotprod_linears_on_the_board(aarch64_board, rows, inner, outer):
    compiled, x = dynamic_int8_linear(rows, inner, outer, "rpi5")
    check(compiled, (x,), ARM_SDOT, aarch64_board)


def test_arm_without_dotprod_keeps_plain_integer_code():
    """rpi4's Cortex-A72 (Armv8.0) has no dotprod: no sdot in its code."""
    compiled, _ = static_int8_convolution("grouped", "rpi4")
    assert "sdot" not in assembly(compiled)


def test_a_module_needing_features_this_cpu_lacks_is_refused_before_it_runs(tmp_path):
    """Built for a CPU with every extension Kiln's kernels use: the features are recorded in the
    artifact, and a machine without one refuses to run it (an illegal instruction otherwise)."""
    model, x = nn.Linear(64, 32).eval(), torch.randn(4, 64)
    compiled = kiln.compile(model, (x,), target={"kind": "llvm", "mcpu": "graniterapids", "num-cores": 2})
    assert {"amx-tile", "avx512vnni", "avx512bf16"} <= set(compiled.target.cpu_features)
    compiled.save(tmp_path / "amx.kiln")
    loaded = kiln.load(tmp_path / "amx.kiln")
    if {"amx-tile", "amx-int8", "amx-bf16"} <= host_features():
        assert_matches(loaded(x), compiled(x))
    else:
        with pytest.raises(kiln.TargetError, match="amx"):
            loaded(x)


# AMX tiles: 7-16 output rows (a matmul's rows, a stride-1 convolution's pixels: widths 14 and 7 in
# partial tiles) × 16-64 channels,
# reductions of 64 steps per tap; a layer that does not fit (96 inputs, stride 2) takes vpdpbusd
AMX_TARGET = {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2}
AMX_CONVOLUTIONS = {
    "3x3_64_to_64_pad1": (64, 64, 3, 1, 1, 1, 6, 32, 1),
    "pointwise_128_to_48_batch2": (128, 48, 1, 1, 0, 1, 3, 16, 2),
    "5x5_64_to_32_pad2": (64, 32, 5, 1, 2, 1, 5, 16, 1),
    "width_14_in_tiles_of_14": (64, 64, 3, 1, 1, 1, 4, 14, 1),
    "width_7_batch2_128_channels": (128, 64, 3, 1, 1, 1, 7, 7, 2),
    "3x3_stride2_odd_width": (64, 64, 3, 2, 1, 1, 9, 29, 1),
}
AMX_LINEARS = [(16, 256, 96), (32, 768, 64), (48, 128, 16), (28, 128, 32), (64, 1024, 256)]  # the last: a panel per task, 2 chunks, 2 row blocks a call


def amx_convolution(name: str, target) -> tuple[kiln.CompiledModule, torch.Tensor]:
    cin, cout, k, stride, pad, groups, h, w, batch = AMX_CONVOLUTIONS[name]
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad), nn.ReLU(), nn.Conv2d(cout, 64, 1)).eval()
    x = torch.randn(batch, cin, h, w) + 0.5
    compiled = kiln.compile(model, (x,), target=target, quantize="int8", calibration=[(torch.randn_like(x) + 0.5,) for _ in range(2)])
    return compiled, x


@pytest.mark.parametrize("name", AMX_CONVOLUTIONS)
def test_amx_convolutions(name):
    compiled, x = amx_convolution(name, AMX_TARGET)
    check(compiled, (x,), AMX_INT8)
    assert "ldtilecfg" in assembly(compiled)


@pytest.mark.parametrize("rows, inner, outer", AMX_LINEARS)
def test_amx_linears(rows, inner, outer):
    compiled, x = dynamic_int8_linear(rows, inner, outer, AMX_TARGET)
    check(compiled, (x,), AMX_INT8)


def _whole(buffer):
    return buffer[tuple(slice(0, extent) for extent in buffer.shape)]


def _free_strides(shape: tuple) -> list:
    return [T.int32() for _ in shape[:-1]] + [1]


def _tap_strides(buffer, rank_without_taps: int) -> tuple:
    """(kernel-row stride, kernel-column or pixel stride) of an operand that spans taps; (0, 0) for one tap."""
    return (0, 0) if len(buffer.shape) == rank_without_taps else (buffer.strides[0], buffer.strides[1])


def emulated_tile_kernel(dot: DotInstruction, rows: int, columns: int, steps: int, taps: tuple[int, int] = (1, 1)):
    """The AMX kernel's walk through memory in plain TIR, from the base pointers and row strides it
    hands tileloadd/tilestored (rows of 64 bytes), with tdpbusd/tdpbf16ps as Intel defines them:
    what runs where the CPU has no AMX, so that the packing, the schedule and the kernel's
    addressing are checked against the IR on any machine. Over a convolution's taps, tap (r, q)
    reads input rows from A + r·(image row) + q·(pixel) and its weights from B + r·B₀ + q·B₁."""
    group, tiles, block = dot.group, columns // amx.TILE_COLUMNS, amx.tile_steps(dot)
    a_shape = (rows, steps) if taps == (1, 1) else (taps[0], rows + taps[1] - 1, steps)
    b_shape = (steps // group, columns, group) if taps == (1, 1) else (*taps, steps // group, columns, group)

    @T.prim_func(s_tir=True)
    def emulated(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, dot.activation, offset_factor=1, strides=_free_strides(a_shape))
        B = T.match_buffer(b, b_shape, dot.weight, offset_factor=1, strides=_free_strides(b_shape))
        C = T.match_buffer(c, (rows, columns), dot.accumulator, offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:rows, 0:columns], _whole(A), _whole(B))
            T.writes(C[0:rows, 0:columns])
            flat_a = T.decl_buffer((1,), dot.activation, data=A.data)
            flat_b = T.decl_buffer((1,), dot.weight, data=B.data)
            flat_c = T.decl_buffer((1,), dot.accumulator, data=C.data)
            emulated_amx_tiles = T.alloc_buffer((tiles, rows, 16), dot.accumulator, scope="local")
            for tile, m, n in T.grid(tiles, rows, 16):  # tileloadd: row m at C + tile·16 + m·row_c
                emulated_amx_tiles[tile, m, n] = flat_c[C.elem_offset + tile * 16 + m * C.strides[0] + n]
            for r, q, step_block, tile, m, n, g, i in T.grid(taps[0], taps[1], steps // block, tiles, rows, 16, block // group, group):
                # A tile row m at A + r·image + (m + q)·row_a + block·b; B tile row g at
                # B + r·B₀ + q·B₁ + block·(b/G)·row_b + tile·16·column_b + g·row_b
                emulated_amx_tiles[tile, m, n] = emulated_amx_tiles[tile, m, n] + dot.product(
                    flat_a[A.elem_offset + r * _tap_strides(A, 2)[0] + (m + q) * A.strides[len(a_shape) - 2] + step_block * block + group * g + i],
                    flat_b[B.elem_offset + r * _tap_strides(B, 3)[0] + q * _tap_strides(B, 3)[1] + step_block * (block // group) * B.strides[len(b_shape) - 3]
                           + tile * 16 * B.strides[len(b_shape) - 2] + g * B.strides[len(b_shape) - 3] + group * n + i])
            for tile, m, n in T.grid(tiles, rows, 16):
                flat_c[C.elem_offset + tile * 16 + m * C.strides[0] + n] = emulated_amx_tiles[tile, m, n]

    return emulated


@pytest.fixture
def emulated_amx(monkeypatch):
    """Host compiles pack and schedule integer and bf16 layers for AMX, with the emulated kernel."""
    from kiln.backends.tvm import pipeline

    def emulated_intrinsic(dot: DotInstruction, height: int, row_tiles: int, columns: int, steps: int, taps=(1, 1), row_blocks=1) -> str:
        rows = height * row_tiles * row_blocks  # stacked row tiles and blocks: one walk of their rows, `row_a` apart
        name = f"test_emulated_{dot.name}_{rows}x{columns}x{steps}_{taps[0]}x{taps[1]}"
        TensorIntrin.register(name, amx.tile_description(dot, rows, columns, steps, taps),
                              emulated_tile_kernel(dot, rows, columns, steps, taps), override=True)
        return name

    monkeypatch.setattr(pipeline, "integer_dots", lambda target: [AMX_INT8, *integer_dots(target)])
    monkeypatch.setattr(pipeline, "bf16_dots", lambda target: [AMX_BF16])
    monkeypatch.setattr(amx, "tile_intrinsic", emulated_intrinsic)


@pytest.mark.parametrize("name", AMX_CONVOLUTIONS)
def test_amx_convolution_tiles_emulated(emulated_amx, name):
    compiled, x = amx_convolution(name, "llvm")
    assert "emulated_amx_tiles" in assembly(compiled, "ll"), "the convolution was not tiled for AMX"
    with torch.no_grad():
        assert_matches(compiled(x), compiled.graph.run(x)[0], tolerance=1e-6)


@pytest.mark.parametrize("rows, inner, outer", AMX_LINEARS)
def test_amx_linear_tiles_emulated(emulated_amx, rows, inner, outer):
    compiled, x = dynamic_int8_linear(rows, inner, outer, "llvm")
    assert "emulated_amx_tiles" in assembly(compiled, "ll"), "the linear was not tiled for AMX"
    with torch.no_grad():
        assert_matches(compiled(x), compiled.graph.run(x)[0], tolerance=1e-6)


SHARES_THE_THREAD_WITH_MLAS = """
import torch, onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
import kiln
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, 1, 1), torch.nn.ReLU(),
                            torch.nn.Conv2d(64, 128, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(128, 128, 3, 1, 1)).eval()
x = torch.randn(1, 3, 112, 112)
torch.onnx.export(model, (x,), "fp32.onnx", dynamo=False, input_names=["x"], opset_version=17)
class Reader(CalibrationDataReader):
    def __init__(self): self.batches = iter([{"x": x.numpy()}])
    def get_next(self): return next(self.batches, None)
quantize_static("fp32.onnx", "int8.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
options = ort.SessionOptions(); options.intra_op_num_threads = 1
session = ort.InferenceSession("int8.onnx", options, providers=["CPUExecutionProvider"])
compiled = kiln.compile(model, (x,), target={"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 1}, quantize="int8",
                        calibration=[(x,)], threads=1)
assert "tdpbusd" in next(row.note for row in compiled.report.rows if row.name == "ScheduleCPU")
for _ in range(10):  # one thread: MLAS keeps its tile configuration across calls, Kiln's kernels run between them
    session.run(None, {"x": x.numpy()})
    compiled(x)
print("ok")
"""


@pytest.mark.skipif(not {"amx-tile", "amx-int8"} <= host_features(), reason="needs a CPU with AMX (lscpu | grep amx)")
def test_amx_kernels_leave_the_tile_configuration_they_found(tmp_path):
    """ONNX Runtime's int8 kernels configure the tiles once per thread; a Kiln kernel in between
    that left its own configuration made their next instruction illegal (SIGILL)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", SHARES_THE_THREAD_WITH_MLAS], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (result.returncode, result.stderr[-2000:])


def test_an_exported_amx_bundle_asks_linux_for_the_tile_state(tmp_path, monkeypatch):
    """Linux hands out AMX's tile state only on request: the bundle records the CPU features its
    kernels may use and its runner asks before it loads the library."""
    import json

    from kiln.backends.tvm.runtime import bundle_runner

    compiled, _ = dynamic_int8_linear(16, 256, 96, AMX_TARGET)
    compiled.export(tmp_path / "bundle")
    assert "amx-tile" in json.loads((tmp_path / "bundle" / "kiln_bundle.json").read_text())["cpu_features"]
    asked = []
    monkeypatch.setattr(bundle_runner, "request_amx_state", lambda: asked.append(True))
    bundle_runner.load_bundle(tmp_path / "bundle")
    assert asked == [True]


def bf16_model(kind: str):
    """A bf16 linear stack or convolution stack whose layers come in whole AMX tiles."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 48)).eval(), torch.randn(2, 32, 256)
    if kind == "wide_linear":  # four panels: one per task, the reduction in two L1-sized chunks, all 64 rows in one call
        return nn.Sequential(nn.Linear(512, 256), nn.GELU(), nn.Linear(256, 512)).eval(), torch.randn(1, 64, 512)
    return nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 128, 1)).eval(), torch.randn(1, 64, 6, 32)


@pytest.mark.parametrize("kind", ["linear", "wide_linear", "convolution"])
def test_amx_bf16_layers(kind):
    model, x = bf16_model(kind)
    compiled = kiln.compile(model, (x,), target=AMX_TARGET, quantize="bf16")
    check(compiled, (x,), AMX_BF16, tolerance=2e-2)
    code = assembly(compiled)
    assert "ldtilecfg" in code and "sttilecfg" in code  # its configuration, then the one it found put back


@pytest.mark.parametrize("kind", ["linear", "wide_linear", "convolution"])
def test_amx_bf16_tiles_emulated(emulated_amx, kind):
    """float32 accumulation of bf16 products, rounded to bf16 as the IR rounds its outputs: within
    a bf16 ulp or two of the IR's (torch's) summation order."""
    model, x = bf16_model(kind)
    compiled = kiln.compile(model, (x,), target="llvm", quantize="bf16")
    assert "emulated_amx_tiles" in assembly(compiled, "ll"), "the layers were not tiled for AMX"
    with torch.no_grad():
        assert_matches(compiled(x), compiled.graph.run(x)[0], tolerance=2e-2)


def test_bf16_layers_amx_cannot_take_compute_in_float32():
    """An RGB stem (3 channels per tap) and a strided 1×1 convolution fit no AMX tile: they run the
    float kernels on their bf16-rounded inputs and weights, not scalar bf16 arithmetic."""
    model = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 1, 2)).eval()
    x = torch.randn(1, 3, 20, 20)
    compiled = kiln.compile(model, (x,), target=AMX_TARGET, quantize="bf16")
    schedule = next(row for row in compiled.report.rows if row.name == "ScheduleCPU")
    assert "dot-product kernels" not in schedule.note, schedule.note
    assert assembly(compiled, "ll").count("define internal fastcc i32 @fused_packed_conv2d") == 2  # float panels
    if not compiled.target.missing_cpu_features():
        with torch.no_grad():
            assert_matches(compiled(x), compiled.graph.run(x)[0], tolerance=2e-2)


def test_bf16_convolutions_stay_channels_last_between_layers():
    """half_precision's bias has the output's rank, so channels-last runs from the first layer to
    the last: one transpose in, one out (a rank-3 bias had left each layer between two)."""
    model = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 16, 1)).eval()
    compiled = kiln.compile(model, (torch.randn(1, 16, 8, 8),), target="llvm", quantize="bf16")
    functions = re.findall(r"define internal fastcc i32 @(\w+)_compute_", assembly(compiled, "ll"))
    assert sum("transpose" in name for name in functions) == 2, functions
