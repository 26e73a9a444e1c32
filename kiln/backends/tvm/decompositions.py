"""Kiln's decompositions: ATen ops written in other ATen ops that the TVM import reads, where
torch's own decomposition goes to its primitives (`prims.hypot`, `prims.fmax`) or none exists,
and where TVM has the op but no kernel for it (`cosh`: no LLVM intrinsic). `lower.py` applies
them before import, wherever the op appears, ahead of torch's table; each is written to give
torch's numbers, edge cases included (NaN, signed zero, overflow), and the compile's numeric
check holds it to that."""

from __future__ import annotations

import math
from typing import Callable

import torch

aten = torch.ops.aten

_LN2 = math.log(2.0)


def _floating(x: torch.Tensor) -> torch.Tensor:
    """x, or integers as the default float dtype: what torch's unary float functions compute in."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _half_exp(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(|x|)/2 and exp(-|x|)/2, the first without overflowing where cosh(x) itself does not
    (exp(89) overflows float32, cosh(89) does not)."""
    magnitude = x.abs()
    return torch.exp(magnitude - _LN2), 0.5 * torch.exp(-magnitude)


def cosh(x: torch.Tensor) -> torch.Tensor:
    up, down = _half_exp(_floating(x))
    return up + down


def sinh(x: torch.Tensor) -> torch.Tensor:
    """exp(|x|)/2 − exp(−|x|)/2 with x's sign; below |x| = 1, where that difference cancels, the
    Taylor series to x⁹ (its error under 3e-8 of the value there)."""
    x = _floating(x)
    up, down = _half_exp(x)
    square = x * x
    series = x * (1 + square / 6 * (1 + square / 20 * (1 + square / 42 * (1 + square / 72))))
    return torch.where(x.abs() < 1, series, torch.sign(x) * (up - down))


def hypot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """√(a² + b²) scaled by the larger magnitude, so that squares of large values do not
    overflow; inf wherever either is infinite (also against NaN), as in C's hypot."""
    a, b = a.abs(), b.abs()
    large, small = torch.maximum(a, b), torch.minimum(a, b)
    ratio = torch.where(large > 0, small / large, torch.zeros_like(large))
    result = large * torch.sqrt(1 + ratio * ratio)
    return result.masked_fill(torch.isinf(a) | torch.isinf(b), math.inf)


def fmax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The larger, ignoring a NaN where the other is a number."""
    return torch.where(torch.isnan(b), a, torch.where(torch.isnan(a), b, torch.maximum(a, b)))


def fmin(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(b), a, torch.where(torch.isnan(a), b, torch.minimum(a, b)))


def copysign(a: torch.Tensor, b) -> torch.Tensor:
    """|a| with b's sign, −0.0 counted negative (1/−0.0 is −inf)."""
    b = torch.as_tensor(b, dtype=a.dtype) if not isinstance(b, torch.Tensor) else b
    negative = (b < 0) | ((b == 0) & (1 / b < 0))
    magnitude = a.abs() if a.is_floating_point() else a.abs().to(torch.promote_types(a.dtype, b.dtype))
    return torch.where(negative, -magnitude, magnitude)


def var_mean(x: torch.Tensor, dim=None, *, correction=None, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return (aten.var.correction(x, dim, correction=correction, keepdim=keepdim),
            aten.mean.dim(x, dim if dim is not None else list(range(x.dim())), keepdim))


def scatter_add(x: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    return aten.scatter_reduce.two(x, dim, index, source, "sum", include_self=True)


def _in_dtype(value: float, dtype: torch.dtype) -> float:
    """`value` rounded to `dtype` as a Python float (a constant of the graph, not an op)."""
    import ml_dtypes
    import numpy

    kinds = {torch.float32: numpy.float32, torch.float64: numpy.float64, torch.float16: numpy.float16,
             torch.bfloat16: ml_dtypes.bfloat16}
    return float(kinds[dtype](value))


def histc(x: torch.Tensor, bins: int = 100, min: float = 0.0, max: float = 0.0) -> torch.Tensor:  # noqa: A002 - torch's names
    """Counts per bin of a fixed range, as torch's CPU kernel counts them: the bin is
    ⌊(x − first edge)·bins / (last edge − first edge)⌋ in x's precision, the edges min and max
    rounded to it (torch.linspace's ends), a value on the last edge in the last bin, values
    outside the range or NaN not counted. A range taken from the data (min == max) is refused:
    its edges would come from values the compiled graph cannot fix in advance."""
    if min == max:
        from kiln.errors import UnsupportedOpError

        raise UnsupportedOpError("aten.histc with min == max (a range taken from the data)", "histc", "", "the TVM backend")
    first, last = _in_dtype(min, x.dtype), _in_dtype(max, x.dtype)
    width = _in_dtype(last - first, x.dtype)  # the difference of two floats of x's dtype, rounded as x's arithmetic rounds it
    flat = x.reshape(-1)
    position = ((flat - first) * bins / width).to(torch.int64).clamp(max=bins - 1)  # the last edge: the last bin
    counted = (flat >= first) & (flat <= last)
    hits = (position.unsqueeze(1) == torch.arange(bins).unsqueeze(0)) & counted.unsqueeze(1)
    return hits.sum(0).to(x.dtype)


def exp2(x: torch.Tensor) -> torch.Tensor:
    """2ˣ as a power, exact at integers as torch's exp2 is (exp(x·ln 2) is not)."""
    return torch.pow(2.0, _floating(x))


def _scaled_sum(term: torch.Tensor, product: torch.Tensor, beta, alpha) -> torch.Tensor:
    """β·term + α·product, term ignored where β is 0 (its NaN and inf too), as BLAS reads β."""
    scaled = product if alpha == 1 else product * alpha
    return scaled if beta == 0 else scaled + (term if beta == 1 else term * beta)


def addmv(term: torch.Tensor, matrix: torch.Tensor, vector: torch.Tensor, *, beta=1, alpha=1) -> torch.Tensor:
    return _scaled_sum(term, torch.mv(matrix, vector), beta, alpha)


def addbmm(term: torch.Tensor, first: torch.Tensor, second: torch.Tensor, *, beta=1, alpha=1) -> torch.Tensor:
    return _scaled_sum(term, torch.bmm(first, second).sum(0), beta, alpha)


def unfold(x: torch.Tensor, dimension: int, size: int, step: int) -> torch.Tensor:
    """Windows of `size` every `step` along `dimension`, as a gather of their indices (torch's
    own decomposition is a non-contiguous as_strided, which TVM's importer refuses)."""
    dimension = dimension % max(x.dim(), 1)
    if x.dim() == 0:
        return x.reshape(1)
    windows = (x.shape[dimension] - size) // step + 1
    index = (torch.arange(windows).unsqueeze(1) * step + torch.arange(size).unsqueeze(0)).reshape(-1)
    gathered = x.index_select(dimension, index)
    shape = list(x.shape[:dimension]) + [windows, size] + list(x.shape[dimension + 1:])
    return gathered.reshape(shape).movedim(dimension + 1, -1)


DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable] = {
    aten.exp2.default: exp2,
    aten.addmv.default: addmv,
    aten.addbmm.default: addbmm,
    aten.unfold.default: unfold,
    aten.cosh.default: cosh,
    aten.sinh.default: sinh,
    aten.hypot.default: hypot,
    aten.fmax.default: fmax,
    aten.fmin.default: fmin,
    aten.copysign.Tensor: copysign,
    aten.copysign.Scalar: copysign,
    aten.var_mean.correction: var_mean,
    aten.scatter_add.default: scatter_add,
    aten.histc.default: histc,
}
