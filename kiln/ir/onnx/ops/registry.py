"""The registry of ONNX converters (ONNX operator → torch operators, one converter per op type,
`CONVERTERS`), and what converters of every family share: dtypes, padding and windows.

A converter receives a `NodeContext`: the node's tensor inputs (None for omitted optional ones),
its attributes, and `constant(i)` for inputs that must be known at import time (shapes, axes).
It returns one tensor or a tuple, in the order of the node's outputs.
"""

from __future__ import annotations

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


TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16, onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.UINT16: torch.uint16, onnx.TensorProto.UINT32: torch.uint32, onnx.TensorProto.UINT64: torch.uint64,
    onnx.TensorProto.BOOL: torch.bool,
}
ONNX_TYPES = {dtype: onnx_type for onnx_type, dtype in TORCH_DTYPES.items()}
INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64)


def torch_dtype(onnx_type: int, where: Any = None) -> torch.dtype:
    """The torch dtype of an ONNX element type (a narrow type's carrier); a FrontendError for the ones
    Kiln cannot compute in."""
    if onnx_type in onnx_narrow_types.NARROW_TYPES:
        return onnx_narrow_types.carrier(onnx_type)
    if onnx_type not in TORCH_DTYPES:
        name = onnx.TensorProto.DataType.Name(onnx_type)
        place = f" (node '{where.name or where.output[0]}', {where.op_type})" if isinstance(where, onnx.NodeProto) else (f" ({where})" if where else "")
        raise FrontendError(f"ONNX element type {name}{place} is not supported by Kiln")
    return TORCH_DTYPES[onnx_type]


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


def pad_spatial(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads stay with the operator; asymmetric ones are applied first."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return x, pads[:n]
    return F.pad(x, torch_pads(pads), value=value), [0] * n


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


def native_padding(kernel: list[int], dilations: list[int], pads: list[int]) -> bool:
    """torch's pools take symmetric pads of at most half the (dilated) window."""
    n = len(kernel)
    return pads[:n] == pads[n:] and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in zip(pads[:n], kernel, dilations))


def type_bounds(dtype: torch.dtype) -> tuple[float | int | bool, float | int | bool]:
    """The lowest and highest values of a type (±inf for floats): what max pooling pads with, and
    the max and min of an empty set."""
    if dtype == torch.bool:
        return False, True
    if dtype.is_floating_point:
        return float("-inf"), float("inf")
    return torch.iinfo(dtype).min, torch.iinfo(dtype).max


WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
