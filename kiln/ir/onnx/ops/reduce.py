"""Reductions, arg-extrema and scans."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kiln.ir.onnx.ops.registry import NodeContext, converts, type_bounds
from kiln.ir.onnx.ops.shape import axes_input


@converts("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")
def _reduce(c: NodeContext) -> torch.Tensor:
    x, keep = c.tensor(0), bool(c.attr("keepdims", 1))
    from_input = c.opset >= (13 if c.node.op_type == "ReduceSum" else 18)  # axes moved from attribute to input
    axes = axes_input(c, 1) if from_input else c.attr("axes")
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
    axes = axes_input(c, 1) if c.opset >= 18 else c.attr("axes")
    if axes is None or (not axes and not c.attr("noop_with_empty_axes", 0)):
        axes = list(range(x.dim()))
    if not axes:
        return x
    return _REDUCTIONS[c.node.op_type](x, tuple(a % x.dim() for a in axes), keep).to(x.dtype)


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
