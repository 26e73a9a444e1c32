"""Indexing and search: advanced indexing, gathers, scatters, sorting and top-k."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from kiln.backends.tvm.converters.common import stock_converter
from kiln.errors import UnsupportedOpError
from kiln.ir.source import model_source


def _index(node: fx.Node, importer) -> Any:
    """Advanced indexing x[..., i, j, ...] (integer index tensors, None for a full axis) as one take
    over the indexed axes merged into one: the linear index is Σ (i_k mod size_k)·stride_k over
    the broadcast index tensors, so negative indices wrap as in torch. Torch's layout rule follows:
    adjacent indexed axes keep their place, separated ones move to the front. The importer's
    sequential takes assumed in-range indices (Falcon's `qkv[..., [-2], :]` read garbage) and failed
    on broadcast index tensors (`unfold`'s)."""
    from tvm import relax, tirx

    indices = list(node.args[1])
    given = [axis for axis, index in enumerate(indices) if index is not None]
    index_nodes = [indices[axis] for axis in given]
    bb, x = importer.block_builder, importer.env[node.args[0]]
    shape = list(x.ty.shape)
    sizes = [shape[axis] for axis in given]
    if any(index.meta["val"].dtype == torch.bool for index in index_nodes) or not all(
            isinstance(size, tirx.IntImm) for size in sizes):
        return stock_converter(importer, "index.Tensor")(node)
    sizes = [int(size) for size in sizes]
    adjacent = given == list(range(given[0], given[-1] + 1))
    if not adjacent:  # the indexed axes first, the rest in order
        order = given + [axis for axis in range(len(shape)) if axis not in given]
        x = bb.emit(relax.op.permute_dims(x, order))
        shape = [shape[axis] for axis in order]
        given = list(range(len(given)))
    first, last = given[0], given[-1]
    merged = 1
    for size in sizes:
        merged *= size
    if len(given) > 1:
        x = bb.emit(relax.op.reshape(x, shape[:first] + [merged] + shape[last + 1:]))
    linear, stride = None, merged
    for index_node, size in zip(index_nodes, sizes):
        stride //= size
        index = importer.env[index_node]
        dtype = str(index.ty.dtype)
        index = bb.emit(relax.op.floor_mod(index, relax.const(size, dtype)))
        term = index if stride == 1 else bb.emit(relax.op.multiply(index, relax.const(stride, dtype)))
        linear = term if linear is None else bb.emit(relax.op.add(linear, term))
    return bb.emit(relax.op.take(x, linear, axis=first, mode="clip"))


def _take(data_at: int, index_at: int, axis_of: Callable[[fx.Node], int | None]):
    """embedding, index_select and take as Relax's take in "clip" mode, not the importer's "fast":
    the indices are already guarded (kiln/backends/tvm/index_guard.py), and TVM warns at every
    build that a fast take faults on an index out of range."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        data, index = importer.env[node.args[data_at]], importer.env[node.args[index_at]]
        bb = importer.block_builder
        axis = axis_of(node)
        if axis is None:
            data = bb.emit(relax.op.reshape(data, [-1]))
        return bb.emit(relax.op.take(data, index, axis=0 if axis is None else axis % len(data.ty.shape), mode="clip"))

    return convert


def _scatter_reduce(node: fx.Node, importer) -> Any:
    """scatter_reduce (ONNX ScatterElements/ScatterND with a reduction) as Relax's scatter_elements,
    which folds the existing values in, as torch does with include_self=True."""
    from tvm import relax

    if not node.kwargs.get("include_self", node.args[5] if len(node.args) > 5 else True):
        raise UnsupportedOpError("aten.scatter_reduce.two with include_self=False", node.name, model_source(node), "the TVM backend")
    data, dim, index, source, reduce = (node.args[i] for i in range(5))
    if reduce == "mean":  # TVM's running mean gives other numbers than torch's where indices repeat
        raise UnsupportedOpError("aten.scatter_reduce.two with reduce='mean'", node.name, model_source(node), "the TVM backend")
    reduction = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}[reduce]
    env = importer.env
    return importer.block_builder.emit(relax.op.scatter_elements(env[data], env[index], env[source], dim, reduction))


def _sort_keys(x, bb, nan_smallest: bool = False):
    """What TVM's sort library orders by, torch's order of floats made total: NaN above +inf,
    +inf above every number (or, with `nan_smallest`, for min: NaN below −inf), in float64 where
    there is room for it; the library's own comparison would put NaN anywhere."""
    from tvm import relax

    if "float" not in str(x.ty.dtype):
        return x
    keys = bb.emit(relax.op.astype(x, "float64"))
    sign = -1.0 if nan_smallest else 1.0
    infinity = bb.emit(relax.op.equal(x, relax.const(sign * float("inf"), x.ty.dtype)))
    keys = bb.emit(relax.op.where(infinity, relax.const(sign * 1e300, "float64"), keys))
    return bb.emit(relax.op.where(relax.op.isnan(x), relax.const(sign * float("inf"), "float64"), keys))


def _top(x, k: int, axis: int, largest: bool, bb, nan_smallest: bool = False):
    """The k largest (or smallest) values of `x` along `axis` and their indices, in order:
    through TOPI's top-k kernel on the keys of `_sort_keys`, the values gathered from `x`."""
    from tvm import relax, topi

    indices = bb.emit_te(topi.topk, _sort_keys(x, bb, nan_smallest), k, axis, "indices", not largest, "int64")
    return bb.emit(relax.op.gather_elements(x, indices, axis)), indices


def _topk(node: fx.Node, importer) -> Any:
    """topk (the importer emits Relax's topk, which LegalizeOps leaves unlowered on CPU targets)."""
    from tvm import relax

    x = importer.env[node.args[0]]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", -1)
    largest = node.args[3] if len(node.args) > 3 else node.kwargs.get("largest", True)
    return importer.block_builder.emit(relax.Tuple(list(_top(x, node.args[1], dim % len(x.ty.shape), largest,
                                                            importer.block_builder))))


def _extreme(largest: bool):
    """max.dim / min.dim: the value and the index of the first extreme, NaN winning as in torch
    (the importer's max.dim is a top-k left unlowered; it has no min.dim)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax

        x, dim = importer.env[node.args[0]], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        bb = importer.block_builder
        if len(x.ty.shape) == 0:  # a 0-d tensor is its own extreme, at index 0
            return bb.emit(relax.Tuple([x, bb.emit(relax.op.zeros(relax.ShapeExpr([]), "int64"))]))
        axis = dim % len(x.ty.shape)
        values, indices = _top(x, 1, axis, largest, bb, nan_smallest=not largest)
        if not keepdim:
            values, indices = (bb.emit(relax.op.squeeze(tensor, [axis])) for tensor in (values, indices))
        return bb.emit(relax.Tuple([values, indices]))

    return convert


def _sort(returns: str):
    """sort and argsort through TVM's sort library (a stable sort, as torch's on the CPU) on the
    keys of `_sort_keys`: the importer emits Relax's argsort, which LegalizeOps leaves unlowered.
    `returns` is "both" (sort) or "indices" (argsort)."""

    def convert(node: fx.Node, importer) -> Any:
        from tvm import relax, topi

        x = importer.env[node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
        descending = node.args[2] if len(node.args) > 2 else node.kwargs.get("descending", False)
        bb = importer.block_builder
        if len(x.ty.shape) == 0:  # a 0-d tensor is its own sort
            indices = bb.emit(relax.op.zeros(relax.ShapeExpr([]), "int64"))
            return bb.emit(relax.Tuple([x, indices])) if returns == "both" else indices
        axis = dim % len(x.ty.shape)
        indices = bb.emit_te(topi.argsort, _sort_keys(x, bb), None, axis, not descending, "int64")
        if returns == "indices":
            return indices
        return bb.emit(relax.Tuple([bb.emit(relax.op.gather_elements(x, indices, axis)), indices]))

    return convert


def _searchsorted(node: fx.Node, importer) -> Any:
    """searchsorted of a tensor of values through TOPI's binary search; a `sorter` permutation is
    refused by name."""
    from tvm import relax, topi

    if node.kwargs.get("sorter") is not None:
        raise UnsupportedOpError("aten.searchsorted with sorter=", node.name, model_source(node), "the TVM backend")
    right = node.kwargs.get("right", False) or node.kwargs.get("side") == "right"
    dtype = "int32" if node.kwargs.get("out_int32", False) else "int64"
    sequence, values = importer.env[node.args[0]], importer.env[node.args[1]]
    bb = importer.block_builder
    found = bb.emit_te(topi.searchsorted, sequence, values, right, dtype)
    if "float" not in str(values.ty.dtype):
        return found
    # NaN goes after every number, as torch sorts it (the binary search put it first)
    end = relax.const(int(sequence.ty.shape[-1]), dtype)
    return bb.emit(relax.op.where(relax.op.isnan(values), end, found))


CONVERTERS: dict[str, Callable[..., Any]] = {
    "searchsorted.Tensor": _searchsorted,
    "sort.default": _sort("both"),
    "sort.stable": _sort("both"),
    "argsort.default": _sort("indices"),
    "argsort.stable": _sort("indices"),
    "index.Tensor": _index,
    "embedding.default": _take(0, 1, lambda node: 0),
    "index_select.default": _take(0, 2, lambda node: node.args[1]),
    "take.default": _take(0, 1, lambda node: None),
    "scatter_reduce.two": _scatter_reduce,
    "topk.default": _topk,
    "max.dim": _extreme(True),
    "min.dim": _extreme(False),
}
