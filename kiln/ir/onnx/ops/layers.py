"""Convolutions, pooling, normalizations, Gemm and softmax."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from kiln.errors import FrontendError
from kiln.ir.onnx.ops.registry import NodeContext, ceil_pads, converts, native_padding, pad_spatial, same_pads, torch_pads, type_bounds, window_sums


@converts("Conv")
def _conv(c: NodeContext) -> torch.Tensor:
    x, weight, bias = c.tensor(0), c.tensor(1), c.tensor(2)
    n = weight.dim() - 2
    strides, dilations = c.attr("strides", [1] * n), c.attr("dilations", [1] * n)
    pads = same_pads(c, list(x.shape[2:]), list(weight.shape[2:]), strides, dilations)
    x, padding = pad_spatial(x, pads)
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
    if all(d == 1 for d in dilations) and native_padding(kernel, dilations, pads):
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
    if native_padding(kernel, dilations, pads):
        return pool(x, kernel, strides, pads[:n], dilations, ceil_mode=ceil)
    return pool(F.pad(x, torch_pads(pads), value=type_bounds(x.dtype)[0]), kernel, strides, 0, dilations, ceil_mode=ceil)


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
