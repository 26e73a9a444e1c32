"""Kiln's integer operators, as torch custom ops so that quantized graphs stay ordinary Kiln IR:
they run eagerly (the numerical reference the pass manager measures drift against), trace through
torch.export, and lower to TVM integer compute (kiln/backends/tvm/converters/quantized.py).

Activations are uint8 with a zero point, weights int8 symmetric per output channel; products
accumulate in int32 of (x − zero_point)·w. Here the input is padded with its zero point, so that
padding contributes nothing once it is taken off; TVM's lowering carries the activations as uint8
between kernels and, inside a layer, as int16 less their zero point instead
(kiln/backends/tvm/converters/quantized.py), what AVX2's vpmaddwd multiplies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UINT8_RANGE = (0, 255)
INT8_RANGE = (-127, 127)  # symmetric: −128 unused, so that −w is representable


@torch.library.custom_op("kiln::quantize", mutates_args=())
def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float → uint8: round(x · (1 / scale)) + zero_point, saturated. A multiply by the float32
    reciprocal, as fbgemm and oneDNN quantize: a vector divide in every layer's epilogue cost
    ResNet-18's stem a quarter of its time."""
    return torch.clamp(torch.round(x * reciprocal(scale)) + zero_point, *UINT8_RANGE).to(torch.uint8)


def reciprocal(scale: float) -> float:
    """1 / scale rounded to float32: the factor both the reference and the compiled code multiply by."""
    return torch.tensor(1.0 / scale, dtype=torch.float32).item()


@quantize.register_fake
def _(x, scale, zero_point):
    return torch.empty_like(x, dtype=torch.uint8)


@torch.library.custom_op("kiln::dequantize", mutates_args=())
def dequantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 → float32: (x − zero_point) · scale, the real value a float op reads from an integer
    tensor (kiln/passes/quantization/integer_regions.py)."""
    return (x.to(torch.float32) - zero_point) * scale


@dequantize.register_fake
def _(x, scale, zero_point):
    return torch.empty_like(x, dtype=torch.float32)


def _exact(tensor: torch.Tensor) -> torch.Tensor:
    """Integers as float64: exact for int8 products summed over any realistic reduction."""
    return tensor.to(torch.float64)


@torch.library.custom_op("kiln::qconv2d", mutates_args=())
def qconv2d(
    x: torch.Tensor, zero_point: int, weight: torch.Tensor,
    stride: list[int], padding: list[int], dilation: list[int], groups: int,
) -> torch.Tensor:
    """int32 convolution of (x − zero_point) with int8 weights."""
    padded = F.pad(_exact(x), [padding[1], padding[1], padding[0], padding[0]], value=float(zero_point))
    return F.conv2d(padded - zero_point, _exact(weight), None, stride, 0, dilation, groups).to(torch.int32)


@qconv2d.register_fake
def _(x, zero_point, weight, stride, padding, dilation, groups):
    shape = F.conv2d(torch.empty(x.shape, device="meta"), torch.empty(weight.shape, device="meta"), None, stride, padding, dilation, groups).shape
    return x.new_empty(shape, dtype=torch.int32)


@torch.library.custom_op("kiln::quantize_dynamic", mutates_args=())
def quantize_dynamic(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float → symmetric int8 with scales measured on x itself at run time, one per row (token):
    returns (int8 values, float32 scales shaped [..., 1]). Per-row scales keep one outlier token
    from coarsening every other token's grid."""
    scale = torch.clamp(x.abs().amax(-1, keepdim=True), min=1e-8) / 127.0
    return torch.clamp(torch.round(x / scale), *INT8_RANGE).to(torch.int8), scale.to(torch.float32)


@quantize_dynamic.register_fake
def _(x):
    return torch.empty_like(x, dtype=torch.int8), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


@torch.library.custom_op("kiln::qlinear", mutates_args=())
def qlinear(x: torch.Tensor, zero_point: int, weight: torch.Tensor) -> torch.Tensor:
    """int32 (x − zero_point) @ weightᵀ, weight int8 [out, in]; x uint8, or int8 with zero point 0."""
    return torch.matmul(_exact(x) - zero_point, _exact(weight).t()).to(torch.int32)


@qlinear.register_fake
def _(x, zero_point, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.int32)


def dequantize_weight(weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 [out, in], or int4 packed two to a byte (uint8 [out, in/2], low nibble first, offset 8),
    times one scale per group of `in / scales.shape[1]` inputs → float32 [out, in]."""
    if bits == 4:
        low, high = (weight & 15).to(torch.int8) - 8, (weight >> 4).to(torch.int8) - 8
        weight = torch.stack([low, high], dim=-1).reshape(weight.shape[0], -1)
    group = weight.shape[1] // scales.shape[1]
    return (weight.float().reshape(weight.shape[0], -1, group) * scales.float()[..., None]).reshape(weight.shape[0], -1)


@torch.library.custom_op("kiln::linear_weight_only", mutates_args=())
def linear_weight_only(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bits: int, bias: torch.Tensor | None) -> torch.Tensor:
    """A linear layer whose weight is stored as int8 or int4 with group-wise scales and widened to
    float inside the matmul: activations stay float (weight-only quantization)."""
    return F.linear(x, dequantize_weight(weight, scales, bits).to(x.dtype), bias)


@linear_weight_only.register_fake
def _(x, weight, scales, bits, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("kiln::embedding_weight_only", mutates_args=())
def embedding_weight_only(weight: torch.Tensor, scales: torch.Tensor, bits: int, indices: torch.Tensor) -> torch.Tensor:
    """Rows of an int8/int4 embedding table, widened to float32 after the lookup: only the rows
    read are ever float."""
    rows = F.embedding(indices, weight)
    flat = dequantize_weight(rows.reshape(-1, rows.shape[-1]), F.embedding(indices, scales).reshape(-1, scales.shape[-1]), bits)
    return flat.reshape(*indices.shape, -1)


@embedding_weight_only.register_fake
def _(weight, scales, bits, indices):
    columns = weight.shape[1] * (2 if bits == 4 else 1)
    return weight.new_empty((*indices.shape, columns), dtype=torch.float32)
