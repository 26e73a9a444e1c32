"""Shapes, layout and generators: reshape, transpose, concat, split, slice, pad, expand, tile, shape and size, ranges and windows, depth/space moves, einsum."""

from __future__ import annotations


import numpy as np
import onnx
import torch
import torch.nn.functional as F

from kiln.errors import FrontendError
from kiln.ir.onnx.ops.registry import NodeContext, converts, tensor_from_numpy, torch_dtype, torch_pads


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


def axes_input(c: NodeContext, input_index: int) -> list[int] | None:
    axes = c.attr("axes")
    if axes is None and len(c.node.input) > input_index:
        constant = c.constant(input_index)
        axes = None if constant is None else np.atleast_1d(constant).tolist()  # a scalar axis is one axis
    return None if axes is None else [int(a) for a in axes]


@converts("Unsqueeze")
def _unsqueeze(c: NodeContext) -> torch.Tensor:
    x = c.tensor(0)
    rank = x.dim() + len(axes_input(c, 1))
    for axis in sorted(a % rank for a in axes_input(c, 1)):
        x = x.unsqueeze(axis)
    return x


@converts("Squeeze")
def _squeeze(c: NodeContext) -> torch.Tensor:
    x, axes = c.tensor(0), axes_input(c, 1)
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
