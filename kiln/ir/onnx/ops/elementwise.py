"""Elementwise operators: math, comparisons and logic, activations, clip, where, casts."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kiln.ir.onnx import narrow_types as onnx_narrow_types
from kiln.ir.onnx.ops.registry import CONVERTERS, INTEGER_DTYPES, NodeContext, ONNX_TYPES, WIDE_UNSIGNED, converts, torch_dtype


def _unary(op_type: str, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
    CONVERTERS[op_type] = lambda c: function(c.tensor(0))




def _widened(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`function` computed in int64 for uint16/32/64 operands, which torch has no kernels for."""

    def compute(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dtype not in WIDE_UNSIGNED:
            return function(a, b)
        result = function(a.to(torch.int64), b.to(torch.int64))
        return result.to(a.dtype) if result.dtype == torch.int64 else result

    return compute


def _binary(op_type: str, function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    widened = _widened(function)
    CONVERTERS[op_type] = lambda c: widened(c.tensor(0), c.tensor(1))


for _name, _function in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
    "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin, "Cos": torch.cos, "Sign": torch.sign,
    "Not": torch.logical_not, "Softsign": F.softsign, "Round": torch.round, "Tan": torch.tan,
    "Identity": lambda x: x, "IsNaN": torch.isnan, "Acos": torch.acos, "Acosh": torch.acosh, "Asin": torch.asin,
    "Asinh": torch.asinh, "Atan": torch.atan, "Atanh": torch.atanh, "Cosh": torch.cosh, "Sinh": torch.sinh,
    "Mish": F.mish, "BitwiseNot": lambda x: torch.bitwise_not(x.to(torch.int64)).to(x.dtype) if x.dtype in WIDE_UNSIGNED else torch.bitwise_not(x),
}.items():
    _unary(_name, _function)

for _name, _function in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq,
    "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor, "MatMul": torch.matmul,
    "PRelu": lambda x, slope: torch.where(x >= 0, x, x * slope), "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor,
}.items():
    _binary(_name, _function)


@converts("BitShift")
def _bit_shift(c: NodeContext) -> torch.Tensor:
    """Shifts by a negative amount or by the type's width or more give 0 (-1 for a right shift of a
    negative value), as ONNX's reference defines; left shifts wrap around."""
    x, shift = c.tensor(0), c.tensor(1)
    bits, dtype = torch.iinfo(x.dtype).bits, x.dtype
    if dtype in WIDE_UNSIGNED:  # no torch kernels: shift in int64, whose low bits are the same
        x, shift = x.to(torch.int64), shift.to(torch.int64)
    shift = shift.to(x.dtype)
    out_of_range = (shift < 0) | (shift >= bits)
    shift = shift.masked_fill(out_of_range, 0)
    if c.attr("direction") == "LEFT":
        return torch.bitwise_left_shift(x, shift).masked_fill(out_of_range, 0).to(dtype)
    shifted = torch.bitwise_right_shift(x, shift).masked_fill(out_of_range, 0)
    if not dtype.is_signed:
        return shifted.to(dtype)
    return torch.where(out_of_range & (x < 0), torch.full_like(x, -1), shifted)


@converts("Pow")
def _pow(c: NodeContext) -> torch.Tensor:
    """The result has the base's type: the exponent follows it, and integer powers are computed in
    float64 (exact up to 2^53; TVM's power is float-only)."""
    x, y = c.tensor(0), c.tensor(1)
    if x.dtype.is_floating_point:
        return torch.pow(x, y.to(x.dtype))
    return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)


@converts("Div")
def _div(c: NodeContext) -> torch.Tensor:
    a, b = c.tensor(0), c.tensor(1)
    if not a.dtype.is_floating_point and not b.dtype.is_floating_point:
        return _widened(lambda x, y: torch.div(x, y, rounding_mode="trunc"))(a, b)
    return a / b


@converts("Sum", "Max", "Min", "Mean")
def _variadic(c: NodeContext) -> torch.Tensor:
    combine = _widened({"Sum": torch.add, "Max": torch.maximum, "Min": torch.minimum, "Mean": torch.add}[c.node.op_type])
    result = c.tensor(0)
    for index in range(1, len(c.node.input)):
        result = combine(result, c.tensor(index))
    return result / len(c.node.input) if c.node.op_type == "Mean" else result


@converts("Mod")
def _mod(c: NodeContext) -> torch.Tensor:
    a, b = c.tensor(0), c.tensor(1)
    if c.attr("fmod", 0):
        return _widened(torch.fmod)(a, b)
    if not a.dtype.is_floating_point:
        return _widened(torch.remainder)(a, b)
    # the divisor's sign, from fmod: a - floor(a/b)*b (TVM's float remainder) is NaN for a finite a and b = ±inf
    truncated = torch.fmod(a, b)
    # (xor of the signs: TVM compiles != between booleans into a float compare LLVM rejects)
    return torch.where((truncated != 0) & torch.logical_xor(truncated < 0, b < 0), truncated + b, truncated)


@converts("IsInf")
def _is_inf(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    positive, negative = c.attr("detect_positive", 1), c.attr("detect_negative", 1)
    if positive and negative:
        return torch.isinf(x)
    if positive:
        return x == float("inf")
    return x == float("-inf") if negative else torch.zeros_like(x, dtype=torch.bool)


@converts("Swish")
def _swish(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    return x * torch.sigmoid(c.attr("alpha", 1.0) * x)


@converts("ThresholdedRelu")
def _thresholded_relu(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    return torch.where(x > c.attr("alpha", 1.0), x, torch.zeros_like(x))


@converts("Shrink")
def _shrink(c: NodeContext) -> torch.Tensor:
    x, bias, lambd = c.tensor(0), c.attr("bias", 0.0), c.attr("lambd", 0.5)
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero)).to(x.dtype)


@converts("Celu")
def _celu(c: NodeContext) -> torch.Tensor:
    return F.celu(c.tensor(0), c.attr("alpha", 1.0))


@converts("LeakyRelu")
def _leaky_relu(c: NodeContext) -> torch.Tensor:
    return F.leaky_relu(c.tensor(0), c.attr("alpha", 0.01))


@converts("Elu")
def _elu(c: NodeContext) -> torch.Tensor:
    return F.elu(c.tensor(0), c.attr("alpha", 1.0))


@converts("Selu")
def _selu(c: NodeContext) -> torch.Tensor:
    alpha, gamma = c.attr("alpha", 1.67326319217681884765625), c.attr("gamma", 1.05070102214813232421875)
    x = c.tensor(0)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@converts("HardSigmoid")
def _hard_sigmoid(c: NodeContext) -> torch.Tensor:
    return torch.clamp(c.attr("alpha", 0.2) * c.tensor(0) + c.attr("beta", 0.5), 0, 1)


@converts("HardSwish")
def _hard_swish(c: NodeContext) -> torch.Tensor:
    return F.hardswish(c.tensor(0))


@converts("Softplus")
def _softplus(c: NodeContext) -> torch.Tensor:
    return F.softplus(c.tensor(0))


@converts("Gelu")
def _gelu(c: NodeContext) -> torch.Tensor:
    return F.gelu(c.tensor(0), approximate=c.attr("approximate", "none"))


@converts("Clip")
def _clip(c: NodeContext) -> torch.Tensor:
    low = c.constant(1) if len(c.node.input) > 1 else c.attr("min")
    high = c.constant(2) if len(c.node.input) > 2 else c.attr("max")
    if low is None and high is None:
        return c.tensor(0)
    if low is not None and high is not None and float(low) > float(high):  # ONNX (and numpy): everything becomes max
        return torch.full_like(c.tensor(0), float(high))
    if not c.tensor(0).dtype.is_floating_point:  # an omitted bound is the type's limit (no infinite integer)
        limits = torch.iinfo(c.tensor(0).dtype)
        return torch.clamp(c.tensor(0), limits.min if low is None else int(low), limits.max if high is None else int(high))
    return torch.clamp(c.tensor(0), None if low is None else float(low), None if high is None else float(high))


@converts("Where")
def _where(c: NodeContext) -> torch.Tensor:
    return torch.where(c.tensor(0), c.tensor(1), c.tensor(2))


@converts("Cast")
def _cast(c: NodeContext) -> torch.Tensor:
    return _cast_to(c, c.tensor(0), c.attr("to"))


@converts("CastLike")
def _cast_like(c: NodeContext) -> torch.Tensor:
    like = c.elem_type(1) or ONNX_TYPES[c.tensor(1).dtype]
    return _cast_to(c, c.tensor(0), like)


def _cast_to(c: NodeContext, x: torch.Tensor, onnx_type: int) -> torch.Tensor:
    if onnx_type in onnx_narrow_types.NARROW_TYPES:
        return onnx_narrow_types.cast(x, onnx_type, bool(c.attr("saturate", 1)))
    dtype = torch_dtype(onnx_type, c.node)
    if x.dtype.is_floating_point and dtype in INTEGER_DTYPES:
        x = torch.trunc(x)  # ONNX casts round toward zero; TVM's float→int cast agrees only for in-range values
    return x.to(dtype)
