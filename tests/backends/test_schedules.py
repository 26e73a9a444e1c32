"""Kiln's CPU schedule strategies on a range of shapes: odd sizes, tails that do not divide the
vector width, batch > 1, strides, padding, dilation, groups. Each compiled op must match eager,
and the reductions say which strategy scheduled them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from tvm.target import Target

import kiln
from kiln.backends.targets import resolve_target
from kiln.backends.tvm.cpu.register_tile import STACK_ALLOCATION_BYTES, RegisterTile, VectorUnit, register_tile
from kiln.backends.tvm.cpu.dot_instructions import integer_dots
from tests.conftest import assert_matches, eager

# (in, out, kernel, stride, padding, dilation, groups, height, width, batch)
CONVOLUTIONS = {
    "odd_image_3_channels": (3, 16, 3, 1, 1, 1, 1, 15, 13, 1),
    "pointwise_batch3_out24": (8, 24, 1, 1, 0, 1, 1, 7, 7, 3),
    "stride2": (16, 32, 3, 2, 1, 1, 1, 17, 17, 1),
    "dilation2": (16, 16, 3, 1, 2, 2, 1, 12, 12, 2),
    "grouped": (16, 32, 3, 1, 1, 1, 4, 9, 9, 1),
    "depthwise": (32, 32, 3, 1, 1, 1, 32, 10, 10, 1),
    "depthwise_stride2_odd": (24, 24, 3, 2, 1, 1, 24, 11, 11, 2),
    "out20_kernel5_no_vector_tail": (12, 20, 5, 1, 2, 1, 1, 11, 11, 1),
    "stem_7x7_stride2": (3, 64, 7, 2, 3, 1, 1, 32, 32, 1),
}


def _check(model: nn.Module, *inputs: torch.Tensor, tmp_path=None, strategy: str | None = None, kernel: str = "") -> str:
    """Compile for the host CPU, compare with eager, return the scheduled TIR. With `strategy`:
    the kernel whose name holds `kernel` was scheduled by it (the rules fall back silently, so a
    broken strategy would still match eager: this is what sees it)."""
    compiled = kiln.compile(model.eval(), inputs, debug_dir=tmp_path)
    assert_matches(compiled(*inputs), eager(model, *inputs))
    if strategy is not None:
        rules = {name: info["rule"] for name, info in compiled.executable.kernel_info.items() if kernel in name}
        assert rules and all(strategy in rule.split(", ") for rule in rules.values()), rules
    return next(tmp_path.glob("*_tvm_ScheduleCPU.py")).read_text() if tmp_path else ""


@pytest.mark.parametrize("name", CONVOLUTIONS)
def test_conv2d(name, tmp_path):
    cin, cout, k, stride, pad, dilation, groups, h, w, batch = CONVOLUTIONS[name]
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation, groups), nn.ReLU())
    scheduled = _check(model, torch.randn(batch, cin, h, w), tmp_path=tmp_path, strategy="register_tiled_reduction",
                       kernel="conv2d")
    assert "T.parallel(" in scheduled


# (in, out, padding, height, width, batch): 3×3 stride-1 convolutions, which run as Winograd F(2×2, 3×3)
WINOGRAD = {
    "odd_image": (16, 32, 1, 7, 9, 1),
    "batch2_no_padding": (8, 16, 0, 10, 11, 2),
    "wide_padding": (12, 24, 2, 5, 5, 1),
    "out24_half_vectors": (32, 24, 1, 14, 14, 1),
    "three_input_channels": (3, 16, 1, 15, 13, 1),
}


@pytest.mark.parametrize("name", WINOGRAD)
def test_winograd_conv2d(name, tmp_path):
    cin, cout, pad, h, w, batch = WINOGRAD[name]
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, pad), nn.ReLU())
    scheduled = _check(model, torch.randn(batch, cin, h, w), tmp_path=tmp_path)
    assert 'T.sblock("winograd_matmul' in scheduled and 'T.sblock("winograd_output' in scheduled
    assert "T.unroll(" in scheduled and "T.vectorized(" in scheduled
    # both transforms tiled (a batch of one, whose loop TVM drops, included), their first halves
    # computed per tile in registers; 3 channels fill no vector, so that input stays on the fallback
    transformed = ["winograd_output"] + (["winograd_input"] if cin % 4 == 0 else [])
    assert all(_strategy(scheduled, block) == "winograd_transform" for block in transformed)
    assert all(f'{half}_local = T.sblock_alloc_buffer' in scheduled and 'scope="local"' in scheduled.split(f"{half}_local")[1].split("\n")[0]
               for half in ["winograd_output_columns"] + (["winograd_input_rows"] if cin % 4 == 0 else []))


def _strategy(scheduled: str, block: str) -> str:
    """The `kiln.strategy` annotation of `block` in a scheduled TIR script."""
    body = scheduled.split(f'T.sblock("{block}")')[1].split("T.sblock(")[0]
    return body.split('"kiln.strategy": "')[1].split('"')[0]


def test_conv_with_batch_norm_and_residual_epilogue(tmp_path):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    block = Block()
    block.bn.running_mean.uniform_(-1, 1)
    block.bn.running_var.uniform_(0.5, 2)
    scheduled = _check(block, torch.randn(2, 16, 14, 14), tmp_path=tmp_path)
    # one kernel: Winograd conv with folded batch norm (add), residual (add1) and ReLU applied as
    # the output tiles are transformed back
    kernel = scheduled.split("def fused_winograd_conv2d_add_add1_relu(")[1].split("@T.prim_func")[0]
    assert "T.vectorized(" in kernel and "T.parallel(" in kernel
    assert 'T.sblock("winograd_output")' in kernel and 'T.sblock("add' not in kernel and 'T.sblock("relu' not in kernel


@pytest.mark.parametrize("rows, inner, outer", [(1, 7, 5), (13, 33, 48), (128, 64, 40), (3, 16, 1000), (128, 384, 96)])
def test_linear(rows, inner, outer):
    # 5 columns fill no vector of 4 or more: the fallback; every other shape, the register tile
    strategy = "register_tiled_reduction" if outer % 4 == 0 else "parallel_vectorize"
    _check(nn.Linear(inner, outer), torch.randn(rows, inner), strategy=strategy, kernel="matmul")


AVX512, AVX2 = VectorUnit(lanes=16, registers=32), VectorUnit(lanes=8, registers=16)


def test_register_tile_choices():
    # BERT's 128 tokens × 768: 8 rows × 3 vectors (24 accumulators; 2 vectors allow only 8 × 2)
    assert register_tile(768, 128, 768, AVX512) == RegisterTile(rows=8, vectors=3, lanes=16)
    assert register_tile(768, 128, 768, AVX2) == RegisterTile(rows=4, vectors=3, lanes=8)
    # the (128, 384, 96) linear above takes the 3-vector tile on both
    assert register_tile(96, 128, 384, AVX512).vectors == register_tile(96, 128, 384, AVX2).vectors == 3
    # a short reduction keeps its tile on the stack, and at most 2 vectors wide
    short = register_tile(576, 14, 96, AVX512)
    assert short.rows * short.columns * 4 < STACK_ALLOCATION_BYTES and short.vectors <= 2
    # a GEMV's single row: several vectors, independent multiply-add chains (125 of 8 lanes: 5 each)
    assert register_tile(1000, 1, 1280, AVX512) == RegisterTile(rows=1, vectors=5, lanes=8)
    assert register_tile(768, 1, 768, AVX512) == RegisterTile(rows=1, vectors=8, lanes=16)
    # packed weights fix the vectors; rows must divide; unknown rows tile one at a time
    assert register_tile(64, 56, 576, AVX512, vectors=2) == RegisterTile(rows=14, vectors=2, lanes=16)
    assert register_tile(64, None, 576, AVX512).rows == 1
    assert register_tile(7, 3, 10, AVX512) is None  # no vector of 4 or more divides 7


def test_linear_on_3d_input_with_batch():
    _check(nn.Linear(16, 24), torch.randn(2, 9, 16), strategy="register_tiled_reduction", kernel="matmul")


class BatchMatmul(nn.Module):
    def forward(self, a, b):
        return torch.softmax(torch.matmul(a, b) / 3.0, dim=-1)


@pytest.mark.parametrize("length, depth", [(17, 8), (32, 16)])
def test_attention_style_batch_matmul_and_softmax(length, depth):
    _check(BatchMatmul(), torch.randn(2, 3, length, depth), torch.randn(2, 3, depth, length))


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.MaxPool2d(3, 2, 1), (1, 8, 13, 13)),
        (nn.AvgPool2d(2), (2, 16, 10, 10)),
        (nn.AdaptiveAvgPool2d(1), (1, 24, 7, 7)),
        (nn.LayerNorm(37), (3, 5, 37)),
        (nn.Softmax(dim=1), (4, 19)),
        (nn.GELU(), (3, 129)),
    ],
    ids=["maxpool_odd", "avgpool", "global_avgpool", "layernorm_odd", "softmax_odd", "gelu_tail"],
)
def test_pooling_normalization_and_elementwise(layer, shape):
    _check(layer, torch.randn(*shape))


class Reductions(nn.Module):
    def forward(self, x):
        return x.sum(dim=-1), x.mean(dim=(0, 2)), x.amax(dim=1)


def test_reductions_over_odd_axes():
    _check(Reductions(), torch.randn(3, 11, 21))


def test_depthwise_tile_is_a_stack_buffer_not_a_workspace_allocation(tmp_path):
    # a short reduction (9 steps): the tile must not be a local-scope buffer, which TVM fetches
    # from the workspace allocator once per tile
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU())
    scheduled = _check(model, torch.randn(1, 32, 14, 14), tmp_path=tmp_path, strategy="register_tiled_reduction",
                       kernel="conv2d")
    assert "_global = T.sblock_alloc_buffer" in scheduled and 'scope="local"' not in scheduled


@pytest.mark.parametrize("name", ["pointwise_batch3_out24", "dilation2", "out20_kernel5_no_vector_tail", "stem_7x7_stride2"])
def test_int8_conv2d_matches_its_integer_ir(name, tmp_path):
    """Static int8 convolutions: long reductions become the CPU's dot-product kernels (dot_instructions.py:
    vpdpbusd or vpmaddwd; channels that are not whole groups get zero channels), short ones keep
    the generic integer schedule; either way
    the integers are exact, so the compiled module equals the quantized IR run eagerly."""
    cin, cout, k, stride, pad, dilation, groups, h, w, batch = CONVOLUTIONS[name]
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation, groups), nn.ReLU(), nn.Conv2d(cout, 16, 3, padding=1)).eval()
    x = torch.randn(batch, cin, h, w)
    compiled = kiln.compile(model, (x,), quantize="int8", calibration=[(torch.randn_like(x),) for _ in range(2)], debug_dir=tmp_path)
    with torch.no_grad():
        assert_matches(compiled(x), compiled.graph.run(x)[0])
    scheduled = next(tmp_path.glob("*_tvm_ScheduleCPU.py")).read_text()
    dots = integer_dots(Target(resolve_target("llvm").tvm_target))
    if dots:  # at least the second convolution: a long reduction over 16 output channels
        assert any(dot.llvm_intrinsic in scheduled for dot in dots)


@pytest.mark.parametrize("rows, inner, outer", [(1, 64, 32), (33, 768, 48)])
def test_dynamic_int8_linear_matches_its_integer_ir(rows, inner, outer):
    model = nn.Sequential(nn.Linear(inner, outer), nn.GELU(), nn.Linear(outer, 16)).eval()
    x = torch.randn(rows, inner)
    compiled = kiln.compile(model, (x,), quantize="dynamic_int8")
    with torch.no_grad():
        assert_matches(compiled(x), compiled.graph.run(x)[0])


def test_fallback_runs_outer_loops_in_parallel_and_inner_ones_serially(tmp_path):
    # (2, 100, 37): 200 parallel iterations are plenty; the 37 inner ones stay a serial loop rather
    # than one fused parallel counter divided back into three indices per element
    scheduled = _check(nn.GELU(), torch.randn(2, 100, 37), tmp_path=tmp_path)
    assert "T.parallel(T.int64(200))" in scheduled and "in range(T.int64(37))" in scheduled


def test_single_row_matmul_is_register_tiled(tmp_path):
    # TVM drops a GEMV's row axis; the tiled reduction puts it back rather than leave the matmul to
    # the fallback, which accumulates in memory (a 1280 -> 1000 classifier: 209 -> 90 us, 1 thread)
    scheduled = _check(nn.Linear(1280, 1000), torch.randn(1, 1280), tmp_path=tmp_path, strategy="register_tiled_reduction",
                       kernel="matmul")
    kernel = scheduled.split("def fused_packed_matmul")[1].split("@T.prim_func")[0]
    assert 'scope="local"' in kernel and "T.unroll(" in kernel
