"""Shapes and pieces: split, concatenate, squeeze, slice, select, a scalar made a tensor."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from kiln.backends.tvm.converters.common import stock_converter


def _split_with_sizes(node: fx.Node, importer) -> Any:
    """split into pieces of the given sizes as one slice per piece: Relax's split, which the
    importer emits, rejects the repeated cut positions of zero-size pieces (ONNX Split allows them)
    and takes no dynamic sizes (Kiln's LM step splits its attention weights [cache | new tokens])."""
    from tvm import relax

    sizes = node.args[1]
    if all(isinstance(size, int) and size > 0 for size in sizes):
        return stock_converter(importer, "split_with_sizes.default")(node)
    x = importer.env[node.args[0]]
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(x.ty.shape)
    bounds = [importer.env[size] if isinstance(size, fx.Node) else size for size in sizes]
    ends = [sum(bounds[: i + 1]) for i in range(len(bounds))]
    pieces = [relax.op.strided_slice(x, [dim], [end - size], [end], assume_inbound=True) for size, end in zip(bounds, ends)]
    return importer.block_builder.emit(relax.Tuple([importer.block_builder.emit(p) for p in pieces]))


def _cat(node: fx.Node, importer) -> Any:
    """cat without the empty 1-D tensors torch's legacy rule skips (a `transformers` DynamicCache
    starts each layer's keys as `torch.tensor([])` and concatenates onto it): Relax's concat
    requires one rank."""
    from tvm import relax

    tensors = list(node.args[0])
    ranks = {len(t.meta["val"].shape) for t in tensors if isinstance(t, fx.Node) and "val" in t.meta}
    kept = [t for t in tensors if not (tuple(t.meta["val"].shape) == (0,) and len(ranks) > 1)]
    if len(kept) == len(tensors):
        return stock_converter(importer, "cat.default")(node)
    if len(kept) == 1:
        return importer.env[kept[0]]
    axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return importer.block_builder.emit(relax.op.concat([importer.env[t] for t in kept], axis=axis))


def _squeeze(node: fx.Node, importer) -> Any:
    """squeeze of the named dims that have size 1, axes made non-negative: the importer passes
    negative axes through (ConvertLayout then fails with std::bad_alloc: SigLIP's attention-pooling
    head), and when no named dim has size 1 it squeezes every size-1 dim instead of none."""
    from tvm import relax, tirx

    x = importer.env[node.args[0]]
    shape = list(x.ty.shape)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("dims"))
    if dims is None:
        axes = [axis for axis, size in enumerate(shape) if isinstance(size, tirx.IntImm) and int(size) == 1]
    else:
        dims = [dims] if isinstance(dims, int) else list(dims)
        axes = sorted({d % len(shape) for d in dims if isinstance(shape[d % len(shape)], tirx.IntImm) and int(shape[d % len(shape)]) == 1})
    if not axes:
        return x
    return importer.block_builder.emit(relax.op.squeeze(x, axes))


def _slice(node: fx.Node, importer) -> Any:
    """x[..., :n] with n a dynamic size torch proved in bounds (BERT's `position_ids[:, :seq]`
    under a Dim with a maximum): a slice TVM may assume in bounds, so its size is n and not
    min(n, length), which TVM cannot simplify and which left later shapes unknown."""
    from tvm import relax

    dim = node.args[1] if len(node.args) > 1 else 0
    start = node.args[2] if len(node.args) > 2 else None
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    proven = (start in (None, 0) and step == 1 and isinstance(end, fx.Node)
              and str(end.meta.get("val")) == str(node.meta["val"].shape[dim]))
    if not proven:
        return stock_converter(importer, "slice.Tensor")(node)
    x = importer.env[node.args[0]]
    return importer.block_builder.emit(relax.op.strided_slice(x, [dim], [0], [importer.env[end]], [1], assume_inbound=True))


def _select(node: fx.Node, importer) -> Any:
    """x.select(dim, i) as a one-wide slice: the importer's `take` with a negative index (`h[:, -1]`,
    a decoder's last token) reads before the tensor in TVM's fast take, whatever the dim's size."""
    from tvm import relax

    x = importer.env[node.args[0]]
    dim, index = node.args[1] % len(x.ty.shape), node.args[2]
    start = x.ty.shape[dim] + index if index < 0 else index
    piece = importer.block_builder.emit(relax.op.strided_slice(x, [dim], [start], [start + 1], assume_inbound=True))
    return importer.block_builder.emit(relax.op.squeeze(piece, [dim]))


def _scalar_tensor(node: fx.Node, importer) -> Any:
    """scalar_tensor of a size, which may be a dynamic dim (the index guard's bound on a free
    sequence length: kiln/backends/tvm/index_guard.py): the importer makes constants alone."""
    from tvm import relax

    value = importer.env[node.args[0]] if isinstance(node.args[0], fx.Node) else node.args[0]
    dtype = str(node.kwargs.get("dtype") or torch.get_default_dtype()).removeprefix("torch.")
    bb = importer.block_builder
    if isinstance(value, (int, float, bool)):
        return stock_converter(importer, "scalar_tensor.default")(node)
    if isinstance(getattr(value, "ty", None), relax.TensorType):  # a static dim, as the importer's sym_size gives it
        return bb.emit(relax.op.astype(value, dtype))
    as_tensor = bb.emit(relax.op.shape_to_tensor(relax.ShapeExpr([value])))
    return bb.emit(relax.op.astype(bb.emit(relax.op.reshape(as_tensor, [])), dtype))


def _empty(node: fx.Node, importer) -> Any:
    """empty, empty_permuted: zeros (any values are an empty tensor's), of sizes that may be
    dynamic dims; the importer's own empty read the sizes unresolved and failed on a dynamic one."""
    return stock_converter(importer, "zeros.default")(node)


CONVERTERS: dict[str, Callable[..., Any]] = {
    **{name: _empty for name in ("empty.default", "empty.memory_format", "empty_permuted.default")},
    "split_with_sizes.default": _split_with_sizes,
    "cat.default": _cat,
    "scalar_tensor.default": _scalar_tensor,
    "slice.Tensor": _slice,
    "select.int": _select,
    **{name: _squeeze for name in ("squeeze.default", "squeeze.dim", "squeeze.dims")},
}
