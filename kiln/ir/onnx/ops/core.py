"""ONNX operator → torch operators, one converter per ONNX op type (`CONVERTERS`).

A converter receives a `NodeContext`: the node's tensor inputs (None for omitted optional ones),
its attributes, and `constant(i)` for inputs that must be known at import time (shapes, axes).
It returns one tensor or a tuple, in the order of the node's outputs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from kiln.errors import FrontendError, ValueRequiredError
from kiln.ir.onnx import narrow_types as onnx_narrow_types


@dataclass
class NodeContext:
    node: onnx.NodeProto
    inputs: list[Any]
    constants: dict[str, np.ndarray]
    opset: int  # of the default domain: some ops changed meaning between opsets
    elem_types: dict[str, int]  # ONNX element types of the values shape inference could type

    def elem_type(self, index: int) -> int | None:
        """Input `index`'s ONNX element type: tells a narrow type (float8, int4) from its carrier."""
        name = self.node.input[index] if index < len(self.node.input) else ""
        if name in self.constants:
            return onnx_narrow_types.narrow_type_of(np.asarray(self.constants[name])) or self.elem_types.get(name)
        return self.elem_types.get(name)

    def attr(self, name: str, default: Any = None) -> Any:
        for attribute in self.node.attribute:
            if attribute.name == name:
                value = onnx.helper.get_attribute_value(attribute)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def constant(self, index: int) -> np.ndarray | None:
        """Input `index` as a value known at import time; None when the optional input is omitted."""
        if index >= len(self.node.input) or not self.node.input[index]:
            return None
        name = self.node.input[index]
        if name not in self.constants:
            raise ValueRequiredError(
                f"ONNX {self.node.op_type} node '{self.node.name or self.node.output[0]}': input '{name}' must be "
                f"known at import time (a shape or axes computed from data is not supported)",
                name,
            )
        return self.constants[name]

    def tensor(self, index: int) -> torch.Tensor | None:
        value = self.inputs[index] if index < len(self.inputs) else None
        if value is None and index < len(self.node.input) and self.node.input[index] in self.constants:
            return tensor_from_numpy(self.constants[self.node.input[index]], self.node.input[index])
        return value


def tensor_from_numpy(array: Any, name: str) -> torch.Tensor:
    """A torch copy of an ONNX value (bfloat16 included); string tensors are a clear FrontendError."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16)
    if array.dtype.kind in "OSU":
        raise FrontendError(f"ONNX value '{name}' is a string tensor: Kiln compiles numeric tensors only")
    if onnx_narrow_types.narrow_type_of(array) is not None:
        return torch.from_numpy(onnx_narrow_types.to_carrier_array(array))
    if array.dtype.kind == "V" or array.dtype.name.startswith(("float8", "float4")):
        raise FrontendError(f"ONNX value '{name}' has element type {array.dtype.name}, which Kiln does not compute in")
    return torch.from_numpy(np.array(array))


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes  # onnx's own dependency for its bfloat16 arrays

        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


Converter = Callable[[NodeContext], Any]
CONVERTERS: dict[str, Converter] = {}


def converts(*op_types: str) -> Callable[[Converter], Converter]:
    def register(function: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = function
        return function

    return register


def _unary(op_type: str, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
    CONVERTERS[op_type] = lambda c: function(c.tensor(0))


_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def _widened(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`function` computed in int64 for uint16/32/64 operands, which torch has no kernels for."""

    def compute(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dtype not in _WIDE_UNSIGNED:
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
    "Mish": F.mish, "BitwiseNot": lambda x: torch.bitwise_not(x.to(torch.int64)).to(x.dtype) if x.dtype in _WIDE_UNSIGNED else torch.bitwise_not(x),
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
    if dtype in _WIDE_UNSIGNED:  # no torch kernels: shift in int64, whose low bits are the same
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
    like = c.elem_type(1) or _ONNX_TYPES[c.tensor(1).dtype]
    return _cast_to(c, c.tensor(0), like)


def _cast_to(c: NodeContext, x: torch.Tensor, onnx_type: int) -> torch.Tensor:
    if onnx_type in onnx_narrow_types.NARROW_TYPES:
        return onnx_narrow_types.cast(x, onnx_type, bool(c.attr("saturate", 1)))
    dtype = torch_dtype(onnx_type, c.node)
    if x.dtype.is_floating_point and dtype in _INTEGERS:
        x = torch.trunc(x)  # ONNX casts round toward zero; TVM's float→int cast agrees only for in-range values
    return x.to(dtype)


_TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16, onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.UINT16: torch.uint16, onnx.TensorProto.UINT32: torch.uint32, onnx.TensorProto.UINT64: torch.uint64,
    onnx.TensorProto.BOOL: torch.bool,
}
_ONNX_TYPES = {dtype: onnx_type for onnx_type, dtype in _TORCH_DTYPES.items()}
_INTEGERS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64)


def torch_dtype(onnx_type: int, where: Any = None) -> torch.dtype:
    """The torch dtype of an ONNX element type (a narrow type's carrier); a FrontendError for the ones
    Kiln cannot compute in."""
    if onnx_type in onnx_narrow_types.NARROW_TYPES:
        return onnx_narrow_types.carrier(onnx_type)
    if onnx_type not in _TORCH_DTYPES:
        name = onnx.TensorProto.DataType.Name(onnx_type)
        place = f" (node '{where.name or where.output[0]}', {where.op_type})" if isinstance(where, onnx.NodeProto) else (f" ({where})" if where else "")
        raise FrontendError(f"ONNX element type {name}{place} is not supported by Kiln")
    return _TORCH_DTYPES[onnx_type]


@converts("Dropout")
def _dropout(c: NodeContext):
    training = c.constant(2) if len(c.node.input) > 2 and c.node.input[2] else None
    ratio = c.constant(1) if len(c.node.input) > 1 and c.node.input[1] else np.array(c.attr("ratio", 0.5))
    if training is not None and bool(training) and float(ratio) != 0.0:
        raise FrontendError(f"ONNX Dropout node '{c.node.name or c.node.output[0]}': training mode (random masks) is not supported")
    x = c.tensor(0)
    return (x, torch.ones_like(x, dtype=torch.bool)) if len(c.node.output) > 1 else x


# ---- tensor manipulation ----

@converts("Reshape")
def _reshape(c: NodeContext) -> torch.Tensor:
    x, shape = c.tensor(0), [int(s) for s in c.constant(1)]
    if not c.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return torch.reshape(x, shape)


@converts("Flatten")
def _flatten(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    axis = c.attr("axis", 1) % max(x.dim(), 1) if c.attr("axis", 1) < 0 else c.attr("axis", 1)
    if axis == 0:
        return torch.reshape(x, (1, -1))
    if axis == x.dim():
        return torch.reshape(x, (-1, 1))
    # flattens, not a reshape to fixed sizes: a symbolic (dynamic) batch stays symbolic
    inner = torch.flatten(x, axis)
    return torch.flatten(inner, 0, axis - 1) if axis > 1 else inner


@converts("Transpose")
def _transpose(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    return x.permute(*(c.attr("perm") or range(x.dim() - 1, -1, -1)))


@converts("Concat")
def _concat(c: NodeContext) -> torch.Tensor:
    return torch.cat([c.tensor(i) for i in range(len(c.node.input))], dim=c.attr("axis"))


def _axes(c: NodeContext, input_index: int) -> list[int] | None:
    axes = c.attr("axes")
    if axes is None and len(c.node.input) > input_index:
        constant = c.constant(input_index)
        axes = None if constant is None else np.atleast_1d(constant).tolist()  # a scalar axis is one axis
    return None if axes is None else [int(a) for a in axes]


@converts("Unsqueeze")
def _unsqueeze(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    rank = x.dim() + len(_axes(c, 1))
    for axis in sorted(a % rank for a in _axes(c, 1)):
        x = x.unsqueeze(axis)
    return x


@converts("Squeeze")
def _squeeze(c: NodeContext) -> torch.Tensor:
    x, axes = c.tensor(0), _axes(c, 1)
    return x.squeeze() if axes is None else x.squeeze(tuple(a % x.dim() for a in axes))


@converts("Split")
def _split(c: NodeContext):
    x, axis = c.tensor(0), c.attr("axis", 0)
    sizes = c.attr("split") or (c.constant(1).tolist() if len(c.node.input) > 1 and c.node.input[1] else None)
    if sizes is None:
        parts = c.attr("num_outputs", len(c.node.output))
        sizes = [-(-x.shape[axis] // parts)] * parts
        sizes[-1] = x.shape[axis] - sum(sizes[:-1])
    return torch.split(x, [int(s) for s in sizes], dim=axis)


@converts("Slice")
def _slice(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    if len(c.node.input) > 1:
        starts, ends = c.constant(1).tolist(), c.constant(2).tolist()
        axes = c.constant(3).tolist() if c.constant(3) is not None else list(range(len(starts)))
        steps = c.constant(4).tolist() if c.constant(4) is not None else [1] * len(starts)
    else:
        starts, ends = c.attr("starts"), c.attr("ends")
        axes, steps = c.attr("axes") or list(range(len(starts))), [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis % x.dim()
        start, stop, stride = slice(int(start), int(end), int(step)).indices(x.shape[axis])
        if stride < 0:  # a reversed range: flip the axis, then slice it forwards
            x, size = torch.flip(x, (axis,)), x.shape[axis]
            start, stop, stride = size - 1 - start, size - 1 - stop, -stride
        index[axis] = slice(start, max(stop, start), stride)
    return x[tuple(index)]


@converts("Compress")
def _compress(c: NodeContext) -> torch.Tensor:
    """The selection must be known at import time (it sets the output's shape); the data need not."""
    x, condition, axis = c.tensor(0), np.asarray(c.constant(1)).astype(bool).reshape(-1), c.attr("axis")
    if axis is None:
        x, axis = x.reshape(-1), 0
    selected = np.nonzero(condition[:x.shape[axis]])[0]
    return torch.index_select(x, axis % x.dim(), torch.from_numpy(selected.astype(np.int64)))


@converts("ReverseSequence")
def _reverse_sequence(c: NodeContext) -> torch.Tensor:
    """Each batch row's first `length` time steps reversed: a gather whose indices the lengths
    (known at import time) give."""
    x, lengths = c.tensor(0), np.asarray(c.constant(1)).astype(np.int64)
    time_axis, batch_axis = c.attr("time_axis", 0), c.attr("batch_axis", 1)
    steps = np.arange(x.shape[time_axis])[:, None]
    order = np.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)  # [time, batch]
    if batch_axis < time_axis:
        order = order.T
    shape = [1] * x.dim()
    shape[time_axis], shape[batch_axis] = x.shape[time_axis], x.shape[batch_axis]
    index = torch.from_numpy(order.reshape(shape)).expand(x.shape)
    return torch.gather(x, time_axis, index)


@converts("Col2Im")
def _col2im(c: NodeContext) -> torch.Tensor:
    """Col2Im (fold) as a grouped transposed convolution with one-hot kernels: each column row
    (channel c, kernel offset i, j) adds into output channel c at offset (i, j)."""
    x, image, block = c.tensor(0), [int(v) for v in c.constant(1)], [int(v) for v in c.constant(2)]
    if len(block) != 2:
        raise FrontendError(f"ONNX Col2Im node '{c.node.name or c.node.output[0]}': only 2-D images are supported")
    strides, dilations = c.attr("strides", [1, 1]), c.attr("dilations", [1, 1])
    pads = c.attr("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        raise FrontendError(f"ONNX Col2Im node '{c.node.name or c.node.output[0]}': asymmetric pads are not supported")
    blocks = [(image[i] + 2 * pads[i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(2)]
    kernel_size = block[0] * block[1]
    channels = x.shape[1] // kernel_size
    weight = torch.eye(kernel_size, dtype=x.dtype).reshape(kernel_size, 1, *block).repeat(channels, 1, 1, 1)
    natural = [(blocks[i] - 1) * strides[i] - 2 * pads[i] + dilations[i] * (block[i] - 1) + 1 for i in range(2)]
    return F.conv_transpose2d(x.reshape(x.shape[0], x.shape[1], *blocks), weight, None, strides, pads[:2],
                              [image[i] - natural[i] for i in range(2)], channels, dilations)


@converts("Gather")
def _gather(c: NodeContext) -> torch.Tensor:
    x, indices, axis = c.tensor(0), c.tensor(1), c.attr("axis", 0) % c.tensor(0).dim()
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    return torch.index_select(x, axis, indices.reshape(-1)).reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])


@converts("Expand")
def _expand(c: NodeContext) -> torch.Tensor:
    x, shape = c.tensor(0), [int(s) for s in c.constant(1)]
    return x * torch.ones(shape, dtype=x.dtype) if x.dtype != torch.bool else x.expand(torch.broadcast_shapes(x.shape, shape))


@converts("Tile")
def _tile(c: NodeContext) -> torch.Tensor:
    return c.tensor(0).repeat(*[int(r) for r in c.constant(1)])


@converts("Shape")
def _shape(c: NodeContext) -> torch.Tensor:
    return torch._shape_as_tensor(c.tensor(0))


@converts("Pad")
def _pad(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    pads = (c.constant(1) if len(c.node.input) > 1 else np.array(c.attr("pads"))).tolist()
    value = c.constant(2) if len(c.node.input) > 2 and c.node.input[2] else c.attr("value", 0.0)
    rank = x.dim()
    axes = c.constant(3) if len(c.node.input) > 3 and c.node.input[3] else None
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    begins, ends = [0] * rank, [0] * rank
    for index, axis in enumerate(axes):
        begins[axis], ends[axis] = int(pads[index]), int(pads[index + len(axes)])
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[c.attr("mode", "constant")]
    widths = torch_pads(begins + ends)
    if mode == "constant":
        return F.pad(x, widths, value=float(value))
    leading = next((axis for axis in range(rank) if begins[axis] or ends[axis]), rank)
    # torch pads the trailing dims only in these modes (and wants a batch dim before them)
    widths = widths[: 2 * (rank - leading)]
    padded = F.pad(x.unsqueeze(0) if leading == 0 else x, widths, mode=mode)
    return padded.squeeze(0) if leading == 0 else padded


# ---- neural-network operators ----

def same_pads(c: NodeContext, spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads (begins then ends) for auto_pad, or the explicit ones."""
    auto = c.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        return list(c.attr("pads", [0] * 2 * len(kernel))) if auto == "NOTSET" else [0] * 2 * len(kernel)
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(large if auto == "SAME_LOWER" else small)
        ends.append(small if auto == "SAME_LOWER" else large)
    return begins + ends


def torch_pads(pads: list[int]) -> list[int]:
    """ONNX pads (all begins, then all ends) in F.pad's order (last axis first, begin and end)."""
    n = len(pads) // 2
    return [p for axis in reversed(range(n)) for p in (pads[axis], pads[axis + n])]


def _pad_spatial(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads stay with the operator; asymmetric ones are applied first."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return x, pads[:n]
    return F.pad(x, torch_pads(pads), value=value), [0] * n


@converts("Conv")
def _conv(c: NodeContext) -> torch.Tensor:
    x, weight, bias = c.tensor(0), c.tensor(1), c.tensor(2)
    n = weight.dim() - 2
    strides, dilations = c.attr("strides", [1] * n), c.attr("dilations", [1] * n)
    pads = same_pads(c, list(x.shape[2:]), list(weight.shape[2:]), strides, dilations)
    x, padding = _pad_spatial(x, pads)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(x, weight, bias, strides, padding, dilations, c.attr("group", 1))


@converts("ConvTranspose")
def _conv_transpose(c: NodeContext) -> torch.Tensor:
    x, weight, bias = c.tensor(0), c.tensor(1), c.tensor(2)
    n = weight.dim() - 2
    pads = c.attr("pads", [0] * 2 * n)
    if pads[:n] != pads[n:] or c.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or c.attr("output_shape"):
        raise FrontendError(f"ONNX ConvTranspose node '{c.node.name}': asymmetric/auto pads and output_shape are not supported")
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    return conv(x, weight, bias, c.attr("strides", [1] * n), pads[:n], c.attr("output_padding", [0] * n), c.attr("group", 1), c.attr("dilations", [1] * n))


def ceil_pads(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int], pads: list[int]) -> list[int]:
    """`pads` with the ends grown so that a floor-mode window count equals ceil_mode's (ONNX's
    rule: a last window must start inside the input or its begin padding)."""
    n, pads = len(kernel), list(pads)
    for axis in range(n):
        span = (kernel[axis] - 1) * dilations[axis] + 1
        padded = x.shape[2 + axis] + pads[axis] + pads[axis + n]
        windows = -(-(padded - span) // strides[axis]) + 1
        if (windows - 1) * strides[axis] >= x.shape[2 + axis] + pads[axis]:
            windows -= 1
        pads[axis + n] += max((windows - 1) * strides[axis] + span - padded, 0)
    return pads


def window_sums(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int], pads: list[int]) -> torch.Tensor:
    """The sum of each pooling window (zero padding): a depthwise convolution with ones, which,
    unlike torch's pools, takes dilations and any padding."""
    ones = torch.ones((x.shape[1], 1, *kernel), dtype=x.dtype)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    return conv(F.pad(x, torch_pads(pads)), ones, None, strides, 0, dilations, x.shape[1])


def _native_padding(kernel: list[int], dilations: list[int], pads: list[int]) -> bool:
    """torch's pools take symmetric pads of at most half the (dilated) window."""
    n = len(kernel)
    return pads[:n] == pads[n:] and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in zip(pads[:n], kernel, dilations))


@converts("MaxPool", "AveragePool")
def _pool(c: NodeContext):
    x, kernel = c.tensor(0), list(c.attr("kernel_shape"))
    n = len(kernel)
    strides, dilations = c.attr("strides", [1] * n), c.attr("dilations", [1] * n)
    pads = same_pads(c, list(x.shape[2:]), kernel, strides, dilations)
    ceil = bool(c.attr("ceil_mode", 0))
    if c.node.op_type == "MaxPool":
        return _max_pool(c, x, kernel, strides, dilations, pads, ceil)
    include_pad = bool(c.attr("count_include_pad", 0))
    if all(d == 1 for d in dilations) and _native_padding(kernel, dilations, pads):
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return pool(x, kernel, strides, pads[:n], ceil_mode=ceil, count_include_pad=include_pad)
    grown = ceil_pads(x, kernel, strides, dilations, pads) if ceil else pads
    sums = window_sums(x, kernel, strides, dilations, grown)
    # the divisor: the real elements in each window, or those plus the given pads (not ceil's)
    counted = torch.ones_like(x[:1, :1])
    if include_pad:
        counted = F.pad(counted, torch_pads(pads), value=1.0)
        grown = [0] * n + [g - p for g, p in zip(grown[n:], pads[n:])]
    return sums / window_sums(counted, kernel, strides, dilations, grown)


def _max_pool(c: NodeContext, x: torch.Tensor, kernel, strides, dilations, pads, ceil):
    n = len(kernel)
    if len(c.node.output) > 1 and c.node.output[1]:
        return _max_pool_with_indices(x, kernel, strides, dilations, ceil_pads(x, kernel, strides, dilations, pads) if ceil else pads,
                                      column_major=bool(c.attr("storage_order", 0)))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    if _native_padding(kernel, dilations, pads):
        return pool(x, kernel, strides, pads[:n], dilations, ceil_mode=ceil)
    return pool(F.pad(x, torch_pads(pads), value=type_bounds(x.dtype)[0]), kernel, strides, 0, dilations, ceil_mode=ceil)


def type_bounds(dtype: torch.dtype) -> tuple[float | int | bool, float | int | bool]:
    """The lowest and highest values of a type (±inf for floats): what max pooling pads with, and
    the max and min of an empty set."""
    if dtype == torch.bool:
        return False, True
    if dtype.is_floating_point:
        return float("-inf"), float("inf")
    return torch.iinfo(dtype).min, torch.iinfo(dtype).max


def _max_pool_with_indices(x: torch.Tensor, kernel, strides, dilations, pads, column_major: bool):
    """Max pooling with ONNX's Indices output (each maximum's position in the whole input tensor),
    as a running maximum over the window's offsets, the first maximum winning ties: strided slices
    and selects, which every backend lowers (TVM's importer has no indices for max pooling)."""
    n, spatial = len(kernel), list(x.shape[2:])
    flat = torch.zeros((), dtype=torch.int64)
    for axis in (reversed(range(n)) if column_major else range(n)):
        flat = flat * spatial[axis] + torch.arange(spatial[axis]).reshape([-1] + [1] * (n - 1 - axis))
    planes = torch.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *([1] * n))
    positions = F.pad(flat + planes * int(np.prod(spatial)), torch_pads(pads))
    values = F.pad(x, torch_pads(pads), value=type_bounds(x.dtype)[0])
    windows = [(values.shape[2 + a] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1 for a in range(n)]
    best = best_position = None
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(o * d, o * d + (w - 1) * s + 1, s) for o, d, w, s in zip(offset, dilations, windows, strides))
        candidate, position = values[(..., *window)], positions[(..., *window)]
        if best is None:
            best, best_position = candidate, position
            continue
        better = candidate > best
        best, best_position = torch.where(better, candidate, best), torch.where(better, position, best_position)
    return best, best_position


@converts("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if c.node.op_type == "GlobalAveragePool" else x.amax(dims, keepdim=True)


@converts("BatchNormalization")
def _batch_norm(c: NodeContext):
    x, scale, bias, mean, var = (c.tensor(i) for i in range(5))
    epsilon = c.attr("epsilon", 1e-5)
    if not c.attr("training_mode", 0):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)
    # training mode (opset 14+): normalize with the batch's statistics, and return the running ones updated
    axes = tuple(a for a in range(x.dim()) if a != 1)
    batch_mean, batch_var = x.mean(axes), x.var(axes, unbiased=False)
    momentum = c.attr("momentum", 0.9)
    y = F.batch_norm(x, batch_mean, batch_var, scale, bias, False, 0.0, epsilon)
    return y, mean * momentum + batch_mean * (1 - momentum), var * momentum + batch_var * (1 - momentum)


@converts("InstanceNormalization")
def _instance_norm(c: NodeContext) -> torch.Tensor:
    return F.instance_norm(c.tensor(0), weight=c.tensor(1), bias=c.tensor(2), eps=c.attr("epsilon", 1e-5))


@converts("LRN")
def _lrn(c: NodeContext) -> torch.Tensor:
    return F.local_response_norm(c.tensor(0), c.attr("size"), c.attr("alpha", 1e-4), c.attr("beta", 0.75), c.attr("bias", 1.0))


@converts("Gemm")
def _gemm(c: NodeContext) -> torch.Tensor:
    a, b, bias = c.tensor(0), c.tensor(1), c.tensor(2)
    if c.attr("transB", 0) and not c.attr("transA", 0) and c.attr("alpha", 1.0) == 1.0 and c.attr("beta", 1.0) == 1.0 \
            and (bias is None or bias.dim() == 1):
        return F.linear(a, b, bias)  # a fully connected layer, which the passes (pruning, quantization) know
    a = a.t() if c.attr("transA", 0) else a
    b = b.t() if c.attr("transB", 0) else b
    result = torch.matmul(a, b) * c.attr("alpha", 1.0)
    return result if bias is None else result + c.attr("beta", 1.0) * bias


@converts("Softmax", "LogSoftmax")
def _softmax(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    function = torch.softmax if c.node.op_type == "Softmax" else torch.log_softmax
    if c.opset < 13:
        axis = c.attr("axis", 1) % x.dim()  # opset < 13: softmax over the flattened trailing dims
        return function(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)
    return function(x, dim=c.attr("axis", -1))


@converts("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")
def _reduce(c: NodeContext) -> torch.Tensor:
    x, keep = c.tensor(0), bool(c.attr("keepdims", 1))
    from_input = c.opset >= (13 if c.node.op_type == "ReduceSum" else 18)  # axes moved from attribute to input
    axes = _axes(c, 1) if from_input else c.attr("axes")
    if axes is None or (not axes and not c.attr("noop_with_empty_axes", 0)):
        axes = list(range(x.dim()))
    if not axes:
        return x
    axes = tuple(a % x.dim() for a in axes)
    if c.node.op_type == "ReduceMean":
        return x.mean(axes, keepdim=keep)
    if c.node.op_type == "ReduceSum":
        return x.sum(axes, keepdim=keep)
    if c.node.op_type == "ReduceProd":
        for axis in sorted(axes, reverse=True):
            x = x.prod(axis, keepdim=keep)
        return x
    if any(x.shape[a] == 0 for a in axes):
        return _empty_extremum(c.node.op_type, x, axes, keep)
    if x.dtype == torch.bool:  # any/all: TVM's max and min have no boolean identity
        return _reduce_extremum(c.node.op_type, x.to(torch.uint8), axes, keep).to(torch.bool)
    return _reduce_extremum(c.node.op_type, x, axes, keep)


def _reduce_extremum(op_type: str, x: torch.Tensor, axes: tuple[int, ...], keep: bool) -> torch.Tensor:
    return x.amax(axes, keepdim=keep) if op_type == "ReduceMax" else x.amin(axes, keepdim=keep)


def _empty_extremum(op_type: str, x: torch.Tensor, axes: tuple[int, ...], keep: bool) -> torch.Tensor:
    """The max (min) of an empty set is the reduction's identity, as ONNX defines it: the lowest
    (highest) value of the type, -inf (+inf) for floats; torch's amax/amin refuse empty axes."""
    lowest, highest = type_bounds(x.dtype)
    identity = lowest if op_type == "ReduceMax" else highest
    shape = [1 if a in axes else size for a, size in enumerate(x.shape) if keep or a not in axes]
    return torch.full(shape, identity, dtype=x.dtype)


@converts("ArgMax", "ArgMin")
def _arg(c: NodeContext) -> torch.Tensor:
    x, axis, keep = c.tensor(0), c.attr("axis", 0), bool(c.attr("keepdims", 1))
    function = torch.argmax if c.node.op_type == "ArgMax" else torch.argmin
    if c.attr("select_last_index", 0):  # ties resolve to the last index: search the reversed axis
        axis = axis % x.dim()
        return x.shape[axis] - 1 - function(torch.flip(x, (axis,)), dim=axis, keepdim=keep)
    return function(x, dim=axis, keepdim=keep)


_REDUCTIONS: dict[str, Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]] = {
    "ReduceL1": lambda x, axes, keep: x.abs().sum(axes, keepdim=keep),
    "ReduceL2": lambda x, axes, keep: (x * x).sum(axes, keepdim=keep).sqrt(),
    "ReduceSumSquare": lambda x, axes, keep: (x * x).sum(axes, keepdim=keep),
    "ReduceLogSum": lambda x, axes, keep: x.sum(axes, keepdim=keep).log(),
    "ReduceLogSumExp": lambda x, axes, keep: torch.logsumexp(x, axes, keepdim=keep),
}


@converts(*_REDUCTIONS)
def _reduce_composite(c: NodeContext) -> torch.Tensor:
    x, keep = c.tensor(0), bool(c.attr("keepdims", 1))
    axes = _axes(c, 1) if c.opset >= 18 else c.attr("axes")
    if axes is None or (not axes and not c.attr("noop_with_empty_axes", 0)):
        axes = list(range(x.dim()))
    if not axes:
        return x
    return _REDUCTIONS[c.node.op_type](x, tuple(a % x.dim() for a in axes), keep).to(x.dtype)


@converts("ConstantOfShape")
def _constant_of_shape(c: NodeContext) -> torch.Tensor:
    value = c.attr("value")
    fill = tensor_from_numpy(onnx.numpy_helper.to_array(value), c.node.output[0]) if value is not None else torch.zeros(1)
    return fill.reshape(()).expand([int(s) for s in c.constant(0)]).clone()


@converts("Range")
def _range(c: NodeContext) -> torch.Tensor:
    start, limit, delta = (c.constant(i) for i in range(3))
    dtype = tensor_from_numpy(start, c.node.input[0]).dtype
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=dtype)


@converts("Trilu")
def _trilu(c: NodeContext) -> torch.Tensor:
    k = int(c.constant(1)) if len(c.node.input) > 1 and c.node.input[1] else 0
    return torch.triu(c.tensor(0), k) if c.attr("upper", 1) else torch.tril(c.tensor(0), k)


@converts("CumSum", "CumProd")
def _cumulative(c: NodeContext) -> torch.Tensor:
    x, axis = c.tensor(0), int(c.constant(1)) % c.tensor(0).dim()
    function, identity = (torch.cumsum, 0) if c.node.op_type == "CumSum" else (torch.cumprod, 1)
    if c.attr("reverse", 0):
        x = torch.flip(x, (axis,))
    if c.attr("exclusive", 0):  # shift by one: the identity first, the last element dropped
        x = torch.cat([torch.full_like(x.narrow(axis, 0, 1), identity), x.narrow(axis, 0, x.shape[axis] - 1)], axis)
    result = function(x, axis).to(x.dtype)
    return torch.flip(result, (axis,)) if c.attr("reverse", 0) else result


@converts("Hardmax")
def _hardmax(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    if c.opset < 13:  # over the flattened trailing dims
        axis = c.attr("axis", 1) % x.dim()
        flat = x.reshape(*x.shape[:axis], -1)
        return F.one_hot(torch.argmax(flat, -1), flat.shape[-1]).to(x.dtype).reshape(x.shape)
    axis = c.attr("axis", -1) % x.dim()
    return F.one_hot(torch.argmax(x, axis), x.shape[axis]).to(x.dtype).movedim(-1, axis)


@converts("LpNormalization")
def _lp_normalization(c: NodeContext) -> torch.Tensor:
    x, p = c.tensor(0), c.attr("p", 2)
    norm = x.abs().sum(c.attr("axis", -1), keepdim=True) if p == 1 else (x * x).sum(c.attr("axis", -1), keepdim=True).sqrt()
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)  # a zero vector stays zero


def _positive_indices(indices: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    return torch.where(indices < 0, indices + size, indices)


@converts("GatherElements")
def _gather_elements(c: NodeContext) -> torch.Tensor:
    x, axis = c.tensor(0), c.attr("axis", 0) % c.tensor(0).dim()
    return torch.gather(x, axis, _positive_indices(c.tensor(1), x.shape[axis]).to(torch.int64))


@converts("ScatterElements", "Scatter")
def _scatter_elements(c: NodeContext) -> torch.Tensor:
    x, indices, updates = c.tensor(0), c.tensor(1), c.tensor(2)
    axis = c.attr("axis", 0) % x.dim()
    indices = _positive_indices(indices, x.shape[axis]).to(torch.int64)
    reduction = c.attr("reduction", "none")
    if reduction == "none":
        return torch.scatter(x, axis, indices, updates)
    return torch.scatter_reduce(x, axis, indices, updates, {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction])


@converts("GatherND")
def _gather_nd(c: NodeContext) -> torch.Tensor:
    x, indices, batch = c.tensor(0), c.tensor(1).to(torch.int64), c.attr("batch_dims", 0)
    depth = indices.shape[-1]
    batch_shape = x.shape[:batch]
    x = x.reshape(-1, *x.shape[batch:])
    indices = indices.reshape(x.shape[0], -1, depth)
    picks = [torch.arange(x.shape[0]).reshape(-1, 1)]
    picks += [_positive_indices(indices[..., i], x.shape[1 + i]) for i in range(depth)]
    gathered = x[tuple(picks)]
    return gathered.reshape(*batch_shape, *c.tensor(1).shape[batch:-1], *x.shape[1 + depth:])


@converts("ScatterND")
def _scatter_nd(c: NodeContext) -> torch.Tensor:
    """Rows of x (over its first `depth` dims, flattened) scattered by their linear index."""
    x, indices, updates = c.tensor(0), c.tensor(1).to(torch.int64), c.tensor(2)
    depth = indices.shape[-1]
    leading, trailing = x.shape[:depth], x.shape[depth:]
    strides = torch.tensor([int(np.prod(leading[i + 1:])) for i in range(depth)], dtype=torch.int64)
    positive = torch.stack([_positive_indices(indices[..., i], leading[i]) for i in range(depth)], -1)
    rows = (positive * strides).sum(-1).reshape(-1)
    flat_x = x.reshape(-1, *trailing)
    flat_updates = updates.reshape(-1, *trailing)
    index = rows.reshape(-1, *([1] * len(trailing))).expand(flat_updates.shape)
    reduction = c.attr("reduction", "none")
    if reduction == "none":
        return torch.scatter(flat_x, 0, index, flat_updates).reshape(x.shape)
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return torch.scatter_reduce(flat_x, 0, index, flat_updates, reduce).reshape(x.shape)


@converts("OneHot")
def _one_hot(c: NodeContext) -> torch.Tensor:
    indices, depth, values = c.tensor(0), int(c.constant(1)), c.tensor(2)
    indices = _positive_indices(indices.to(torch.int64), depth)
    axis = c.attr("axis", -1) % (indices.dim() + 1)
    hot = (indices.unsqueeze(-1) == torch.arange(depth)).movedim(-1, axis)
    return torch.where(hot, values[1], values[0])


@converts("TopK")
def _top_k(c: NodeContext):
    x, axis = c.tensor(0), c.attr("axis", -1)
    k = int(np.asarray(c.constant(1)).reshape(-1)[0]) if c.opset >= 10 else c.attr("k")
    wide = x.dtype in _WIDE_UNSIGNED  # no torch kernels: int64 orders the same values alike
    values, indices = torch.topk(x.to(torch.int64) if wide else x, k, axis, largest=bool(c.attr("largest", 1)), sorted=True)
    return values.to(x.dtype), indices


@converts("HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix")
def _from_parameters(c: NodeContext) -> torch.Tensor:
    """Operators computed from sizes and parameters alone: once those are known at import time,
    ONNX's reference evaluator folds the node into a constant before any converter runs."""
    for index in range(len(c.node.input)):
        c.constant(index)  # a ValueRequiredError names the input that must be known
    raise FrontendError(f"ONNX {c.node.op_type} node '{c.node.name or c.node.output[0]}' could not be evaluated at import time")


@converts("EyeLike")
def _eye_like(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    dtype = torch_dtype(c.attr("dtype"), c.node) if c.attr("dtype") is not None else x.dtype
    rows, columns, k = x.shape[0], x.shape[1], c.attr("k", 0)
    return (torch.arange(columns).unsqueeze(0) - torch.arange(rows).unsqueeze(1) == k).to(dtype)


@converts("DepthToSpace")
def _depth_to_space(c: NodeContext) -> torch.Tensor:
    x, block = c.tensor(0), c.attr("blocksize")
    n, channels, height, width = x.shape
    if c.attr("mode", "DCR") == "DCR":
        x = x.reshape(n, block, block, channels // block**2, height, width).permute(0, 3, 4, 1, 5, 2)
    else:
        x = x.reshape(n, channels // block**2, block, block, height, width).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, channels // block**2, height * block, width * block)


@converts("SpaceToDepth")
def _space_to_depth(c: NodeContext) -> torch.Tensor:
    x, block = c.tensor(0), c.attr("blocksize")
    n, channels, height, width = x.shape
    x = x.reshape(n, channels, height // block, block, width // block, block)
    # DCR: the block offset is the outer part of the new channel index; CRD: the inner part
    x = x.permute(0, 3, 5, 1, 2, 4) if c.attr("mode", "DCR") == "DCR" else x.permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, channels * block**2, height // block, width // block)


@converts("Einsum")
def _einsum(c: NodeContext) -> torch.Tensor:
    return torch.einsum(c.attr("equation").replace(" ", ""), *[c.tensor(i) for i in range(len(c.node.input))])


@converts("Size")
def _size(c: NodeContext) -> torch.Tensor:
    return torch.tensor(c.tensor(0).numel(), dtype=torch.int64)


@converts("If")
def _if(c: NodeContext):
    """Reached only when the condition is computed from data: Kiln inlines the branch of a
    condition known at import time, and compiles no data-dependent control flow."""
    c.constant(0)
    raise FrontendError(f"ONNX If node '{c.node.name or c.node.output[0]}': a branch chosen at run time is not supported")
