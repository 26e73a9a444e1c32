"""Gathers, scatters, one-hot and top-k."""

from __future__ import annotations


import numpy as np
import torch

from kiln.ir.onnx.ops.registry import NodeContext, WIDE_UNSIGNED, converts


@converts("Gather")
def _gather(c: NodeContext) -> torch.Tensor:
    x, indices, axis = c.tensor(0), c.tensor(1), c.attr("axis", 0) % c.tensor(0).dim()
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    return torch.index_select(x, axis, indices.reshape(-1)).reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])


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
    wide = x.dtype in WIDE_UNSIGNED  # no torch kernels: int64 orders the same values alike
    values, indices = torch.topk(x.to(torch.int64) if wide else x, k, axis, largest=bool(c.attr("largest", 1)), sorted=True)
    return values.to(x.dtype), indices
