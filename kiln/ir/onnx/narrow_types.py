"""ONNX's storage-only element types (float8, float4, int4/uint4, int2/uint2): Kiln carries them in a
wider torch dtype that holds every value of the narrow type exactly (float32 for the small floats,
int8/uint8 for the small integers). A cast *to* a narrow type rounds onto the narrow type's value set
with ONNX's rules (round half to even, saturation or overflow to NaN/inf, wrap-around for integers), so
every value in the graph is one the narrow type can hold; arrays convert to and from the narrow numpy
types (ml_dtypes, onnx's own dependency) at the graph's edges.

Why carriers and not torch's float8/int4 dtypes: TVM's CPU backend has no arithmetic or casts for
them, while float32/int8 arithmetic that rounds onto the same grid compiles everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import torch

_T = onnx.TensorProto


@dataclass(frozen=True)
class NarrowFloat:
    """A small binary float format: values ±m·2^e on a grid of `mantissa_bits` fraction bits."""

    mantissa_bits: int
    min_exponent: int  # the smallest normal exponent; below it, subnormals share its grid step
    max_value: float
    overflow: float  # what a value past max_value becomes without saturation: inf or NaN
    signed_zero: bool  # the "fnuz" formats have one zero (their -0 pattern is NaN)
    has_nan: bool = True  # float4 has no NaN pattern: a NaN becomes 0


@dataclass(frozen=True)
class NarrowInt:
    bits: int
    signed: bool

    @property
    def range(self) -> tuple[int, int]:
        return (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if self.signed else (0, (1 << self.bits) - 1)


NARROW_TYPES: dict[int, NarrowFloat | NarrowInt] = {
    _T.FLOAT8E4M3FN: NarrowFloat(3, -6, 448.0, float("nan"), True),
    _T.FLOAT8E4M3FNUZ: NarrowFloat(3, -7, 240.0, float("nan"), False),
    _T.FLOAT8E5M2: NarrowFloat(2, -14, 57344.0, float("inf"), True),
    _T.FLOAT8E5M2FNUZ: NarrowFloat(2, -15, 57344.0, float("nan"), False),
    _T.FLOAT4E2M1: NarrowFloat(1, 0, 6.0, 6.0, True, has_nan=False),  # no inf or NaN patterns: always saturates
    _T.INT4: NarrowInt(4, True),
    _T.UINT4: NarrowInt(4, False),
    _T.INT2: NarrowInt(2, True),
    _T.UINT2: NarrowInt(2, False),
}

_NUMPY_TYPES = {
    _T.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn, _T.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
    _T.FLOAT8E5M2: ml_dtypes.float8_e5m2, _T.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz,
    _T.FLOAT4E2M1: ml_dtypes.float4_e2m1fn, _T.INT4: ml_dtypes.int4, _T.UINT4: ml_dtypes.uint4,
    _T.INT2: ml_dtypes.int2, _T.UINT2: ml_dtypes.uint2,
}
_NARROW_BY_NUMPY_NAME = {np.dtype(t).name: onnx_type for onnx_type, t in _NUMPY_TYPES.items()}


def carrier(onnx_type: int) -> torch.dtype:
    """The torch dtype a narrow ONNX type travels in."""
    narrow = NARROW_TYPES[onnx_type]
    if isinstance(narrow, NarrowFloat):
        return torch.float32
    return torch.int8 if narrow.signed else torch.uint8


def narrow_type_of(array: np.ndarray) -> int | None:
    """The ONNX type of a narrow numpy (ml_dtypes) array, None for other arrays."""
    return _NARROW_BY_NUMPY_NAME.get(array.dtype.name)


def to_carrier_array(array: np.ndarray) -> np.ndarray:
    narrow = NARROW_TYPES[_NARROW_BY_NUMPY_NAME[array.dtype.name]]
    return array.astype(np.float32 if isinstance(narrow, NarrowFloat) else np.int8 if narrow.signed else np.uint8)


def from_carrier_array(array: np.ndarray, onnx_type: int) -> np.ndarray:
    """A carrier array as the narrow numpy type (exact: the carrier holds only the type's values)."""
    return array.astype(_NUMPY_TYPES[onnx_type])


def cast(x: torch.Tensor, onnx_type: int, saturate: bool = True) -> torch.Tensor:
    """ONNX Cast of `x` to a narrow type, in its carrier: floats round half to even onto the narrow
    grid (saturating to ±max, or overflowing to inf/NaN when `saturate` is off); integers truncate
    toward zero and wrap around, as ONNX's reference (numpy's astype) does."""
    narrow = NARROW_TYPES[onnx_type]
    if isinstance(narrow, NarrowFloat):
        return round_to_grid(x.to(torch.float32), narrow, saturate)
    if x.dtype.is_floating_point:
        x = torch.where(torch.isfinite(x), torch.trunc(x), torch.zeros_like(x))
    values = x.to(torch.int64) & ((1 << narrow.bits) - 1)
    if narrow.signed:
        values = (values ^ (1 << (narrow.bits - 1))) - (1 << (narrow.bits - 1))
    return values.to(carrier(onnx_type))


def saturate_integer(x: torch.Tensor, onnx_type: int) -> torch.Tensor:
    """Quantization's rounding: half to even, then clamped to the narrow integer range."""
    low, high = NARROW_TYPES[onnx_type].range
    return torch.clamp(torch.round(x), low, high).to(carrier(onnx_type))


def round_to_grid(x: torch.Tensor, narrow: NarrowFloat, saturate: bool) -> torch.Tensor:
    """float32 `x` rounded half to even onto the narrow float grid, in float32.

    The grid step of |x| is 2^(e - mantissa_bits) with e = floor(log2 |x|), no lower than the smallest
    normal exponent (subnormals share its step). Dividing by a power of two is exact, so rounding the
    quotient to an integer is exactly the narrow format's rounding; log2's last-bit error next to a
    power of two picks the neighbouring step, and both steps round such a value to that power."""
    magnitude = torch.clamp(torch.abs(x), max=4 * narrow.max_value)  # inf becomes an overflowing finite value
    exponent = torch.clamp(torch.floor(torch.log2(magnitude)), min=narrow.min_exponent)
    step = torch.pow(2.0, exponent - narrow.mantissa_bits)
    rounded = torch.round(magnitude / step) * step
    overflow = narrow.max_value if saturate else narrow.overflow
    rounded = rounded.masked_fill(rounded > narrow.max_value, overflow)
    signed = torch.where(x < 0, -rounded, rounded)
    if not narrow.signed_zero:  # fnuz: -0 is the NaN pattern, so negative values that round to zero are +0
        signed = signed.masked_fill(signed == 0, 0.0)
    return signed.masked_fill(torch.isnan(x), float("nan") if narrow.has_nan else 0.0)
