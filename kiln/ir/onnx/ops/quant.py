"""ONNX converters for the quantization operators (QuantizeLinear, DequantizeLinear, the QLinear
and Integer families). They import quantized ONNX models into Kiln's IR with exact integer
semantics: integer sums are accumulated in float64 (exact for int8/uint8 products far past any
real reduction length), then rounded half-to-even and saturated as ONNX specifies.
"""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F

from kiln.errors import FrontendError
from kiln.ir.onnx import narrow_types as onnx_narrow_types
from kiln.ir.onnx.ops.registry import NodeContext, converts, same_pads, torch_dtype, torch_pads

_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767), torch.uint16: (0, 65535),
           torch.int32: (-(2**31), 2**31 - 1)}


def _broadcast(c: NodeContext, parameter: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-tensor, per-axis (1-D along `axis`) or blocked (`block_size`) scale or zero point,
    shaped to broadcast against x."""
    if parameter.dim() == 0 or parameter.numel() == 1 and x.dim() == 0:
        return parameter.reshape(())
    axis = c.attr("axis", 1) % x.dim()
    block = c.attr("block_size", 0)
    if block:
        return parameter.repeat_interleave(block, axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = -1
    return parameter.reshape(shape)


def _saturate(values: torch.Tensor, dtype: torch.dtype, c: NodeContext) -> torch.Tensor:
    if dtype not in _RANGES:
        raise FrontendError(f"ONNX {c.node.op_type} node '{c.node.name or c.node.output[0]}': quantizing to {dtype} is not supported")
    low, high = _RANGES[dtype]
    return torch.clamp(torch.round(values), low, high).to(dtype)


def _quantize(c: NodeContext, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    scaled = x.to(torch.float32) / _broadcast(c, scale, x).to(torch.float32)
    if zero_point is not None:
        scaled = torch.round(scaled) + _broadcast(c, zero_point, x).to(torch.float32)
    return _saturate(scaled, dtype, c)


@converts("QuantizeLinear")
def _quantize_linear(c: NodeContext) -> torch.Tensor:
    x, scale, zero_point = c.tensor(0), c.tensor(1), c.tensor(2)
    onnx_type = c.elem_type(2) if zero_point is not None else c.attr("output_dtype") or onnx.TensorProto.UINT8
    narrow = onnx_narrow_types.NARROW_TYPES.get(onnx_type)
    if narrow is None:
        return _quantize(c, x, scale, zero_point, zero_point.dtype if zero_point is not None else torch_dtype(onnx_type, c.node))
    scaled = x.to(torch.float32) / _broadcast(c, scale, x).to(torch.float32)
    if isinstance(narrow, onnx_narrow_types.NarrowInt):  # zero point added after rounding, as for int8
        zero = 0.0 if zero_point is None else _broadcast(c, zero_point, x).to(torch.float32)
        return onnx_narrow_types.saturate_integer(torch.round(scaled) + zero, onnx_type)
    if zero_point is not None:  # float8: the zero point is added before the single rounding onto the grid
        scaled = scaled + _broadcast(c, zero_point, x).to(torch.float32)
    return onnx_narrow_types.cast(scaled, onnx_type, bool(c.attr("saturate", 1)))


@converts("DequantizeLinear")
def _dequantize_linear(c: NodeContext) -> torch.Tensor:
    x, scale, zero_point = c.tensor(0), c.tensor(1), c.tensor(2)
    values = x.to(torch.float32)
    if zero_point is not None:
        values = values - _broadcast(c, zero_point, x).to(torch.float32)
    dtype = torch_dtype(c.attr("output_dtype"), c.node) if c.attr("output_dtype") else scale.dtype
    return (values * _broadcast(c, scale, x).to(torch.float32)).to(dtype)


@converts("DynamicQuantizeLinear")
def _dynamic_quantize_linear(c: NodeContext):
    x = c.tensor(0)
    low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = (high - low) / 255.0
    zero_point = _saturate(-low / scale, torch.uint8, c)
    return _quantize(c, x, scale, zero_point, torch.uint8), scale, zero_point


def _centered(x: torch.Tensor, zero_point: torch.Tensor | None, per_row_axis: int | None = None) -> torch.Tensor:
    """x − zero point, in float64 (exact for integer products and sums)."""
    values = x.to(torch.float64)
    if zero_point is None:
        return values
    zero_point = zero_point.to(torch.float64)
    if zero_point.dim() == 1 and per_row_axis is not None and zero_point.numel() > 1:
        shape = [1] * x.dim()
        shape[per_row_axis] = -1
        zero_point = zero_point.reshape(shape)
    return values - zero_point


@converts("MatMulInteger")
def _matmul_integer(c: NodeContext) -> torch.Tensor:
    a, b = c.tensor(0), c.tensor(1)
    return torch.matmul(_centered(a, c.tensor(2), a.dim() - 2), _centered(b, c.tensor(3), b.dim() - 1)).to(torch.int32)


@converts("QLinearMatMul")
def _qlinear_matmul(c: NodeContext) -> torch.Tensor:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = (c.tensor(i) for i in range(8))
    accumulated = torch.matmul(_centered(a, a_zero, a.dim() - 2), _centered(b, b_zero, b.dim() - 1))
    multiplier = a_scale.to(torch.float64).reshape(-1, 1) if a_scale.numel() > 1 else a_scale.to(torch.float64)
    multiplier = multiplier * b_scale.to(torch.float64) / y_scale.to(torch.float64)
    return _saturate(accumulated * multiplier + y_zero.to(torch.float64), y_zero.dtype, c)


def _integer_conv(c: NodeContext, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    n = weight.dim() - 2
    strides, dilations = c.attr("strides", [1] * n), c.attr("dilations", [1] * n)
    pads = same_pads(c, list(x.shape[2:]), list(weight.shape[2:]), strides, dilations)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(F.pad(x, torch_pads(pads)), weight, None, strides, 0, dilations, c.attr("group", 1))


@converts("ConvInteger")
def _conv_integer(c: NodeContext) -> torch.Tensor:
    x, weight = c.tensor(0), c.tensor(1)
    return _integer_conv(c, _centered(x, c.tensor(2)), _centered(weight, c.tensor(3), 0)).to(torch.int32)


@converts("QLinearConv")
def _qlinear_conv(c: NodeContext) -> torch.Tensor:
    x, x_scale, x_zero, weight, w_scale, w_zero, y_scale, y_zero, bias = (c.tensor(i) for i in range(9))
    accumulated = _integer_conv(c, _centered(x, x_zero), _centered(weight, w_zero, 0))
    if bias is not None:
        accumulated = accumulated + bias.to(torch.float64).reshape(1, -1, *([1] * (x.dim() - 2)))
    multiplier = x_scale.to(torch.float64) * w_scale.to(torch.float64) / y_scale.to(torch.float64)
    multiplier = multiplier.reshape(1, -1, *([1] * (x.dim() - 2))) if multiplier.numel() > 1 else multiplier
    return _saturate(accumulated * multiplier + y_zero.to(torch.float64), y_zero.dtype, c)
