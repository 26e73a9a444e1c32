"""Indices checked: no kernel reads or writes outside its buffers, whatever the inputs, and an
index out of range is the error eager PyTorch gives, not a segfault or a read of other memory.

TVM's gathers trust their indices (its "fast" take reads wherever an index points). Before
import, every op that indexes with a tensor that is not a constant gets, in the graph:
- the index made safe for the kernel: wrapped (`remainder`) where torch lets negative indices
  count from the end, else clamped into the axis; so the kernel stays inside its buffer;
- the index's smallest and largest value and the axis's size, appended to one extra output.
After each call the module reads that output and raises IndexOutOfRangeError, naming the node,
the model line, the bad index and the valid range, where eager would have raised; the outputs
of that call are dropped. The cost is two reductions over each index tensor and a clamp, which
fuses into the gather (benchmarks/results/index_guard.md).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from kiln.backends.tvm.runtime.index_checks import IndexCheck
from kiln.ir import quantized_ops  # noqa: F401 - registers torch.ops.kiln
from kiln.ir.graph import Graph
from kiln.ir.source import model_source

aten = torch.ops.aten

_FIRST = lambda node: 0  # noqa: E731 - the indexed axis: the first (embedding tables' rows)
_DIM = lambda node: node.args[1]  # noqa: E731 - the axis the op's `dim` names
_FLAT = lambda node: None  # noqa: E731 - the tensor flattened (take)

# op -> (which axis of its first argument it indexes, where its index is, whether negative indices count from the end)
_INDEXING: dict[Any, tuple[Callable[[fx.Node], int | None], int, bool]] = {
    aten.embedding.default: (_FIRST, 1, False),
    aten.index_select.default: (_DIM, 2, False),
    aten.gather.default: (_DIM, 2, False),
    aten.take.default: (_FLAT, 1, True),
    aten.scatter.src: (_DIM, 2, False),
    aten.scatter.value: (_DIM, 2, False),
    aten.scatter.reduce: (_DIM, 2, False),
    aten.scatter.value_reduce: (_DIM, 2, False),
    aten.scatter_add.default: (_DIM, 2, False),
    aten.scatter_reduce.two: (_DIM, 2, False),
    aten.index_add.default: (_DIM, 2, False),
    aten.index_copy.default: (_DIM, 2, False),
    aten.index_fill.int_Scalar: (_DIM, 2, True),
    aten.index_fill.int_Tensor: (_DIM, 2, True),
    torch.ops.kiln.embedding_weight_only.default: (_FIRST, 3, False),
}
# ops whose second argument is a list of index tensors, one per leading axis (None: the whole axis)
_INDEX_LISTS = (aten.index.Tensor, aten.index_put.default)


def _sites(graph: Graph) -> list[tuple[fx.Node, tuple, int | None, fx.Node, bool]]:
    """(node, where its index sits in its args, the indexed axis, the index, negative allowed)
    for every index that is computed or given, not a constant."""
    sites = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _INDEXING:
            axis_of, index_at, negative = _INDEXING[node.target]
            candidates = [((index_at,), axis_of(node), node.args[index_at])]
        elif node.target in _INDEX_LISTS:
            negative = True
            candidates = [((1, axis), axis, index) for axis, index in enumerate(node.args[1])]
        else:
            continue
        for path, axis, index in candidates:
            if isinstance(index, fx.Node) and index.op != "get_attr" and not index.meta["val"].dtype.is_floating_point \
                    and index.meta["val"].dtype != torch.bool and index.meta["val"].numel() != 0:
                sites.append((node, path, axis, index, negative))
    return sites


def guard_indices(graph: Graph) -> tuple[Graph, list[IndexCheck]]:
    """`graph` with every non-constant index made safe and reported (see the module's
    docstring), and the checks in the order of the extra output's triples; the graph itself
    where nothing indexes."""
    if not _sites(graph):
        return graph, []
    guarded = graph.copy()
    fx_graph = guarded.module.graph
    checks, reports = [], []
    for node, path, axis, index, negative in _sites(guarded):
        data = node.args[0]
        shape = data.meta["val"].shape
        # a 0-d tensor is indexed as one element along dim 0 (or -1), as torch reads it
        size = data.meta["val"].numel() if axis is None or len(shape) == 0 else shape[axis % len(shape)]
        dtype = index.meta["val"].dtype
        with fx_graph.inserting_before(node):
            if not isinstance(size, int):  # a dynamic axis: its size read at run time
                size = fx_graph.call_function(aten.sym_size.int, (data, axis))
            bound = fx_graph.call_function(aten.scalar_tensor.default, (size,), {"dtype": dtype})
            if negative:
                safe = fx_graph.call_function(aten.remainder.Tensor, (index, bound))
            else:
                top = fx_graph.call_function(aten.sub.Tensor, (bound, 1))
                zero = fx_graph.call_function(aten.scalar_tensor.default, (0,), {"dtype": dtype})
                safe = fx_graph.call_function(aten.maximum.default, (fx_graph.call_function(aten.minimum.default, (index, top)), zero))
            low = fx_graph.call_function(aten.amin.default, (index,))
            high = fx_graph.call_function(aten.amax.default, (index,))
            reports.append(fx_graph.call_function(aten.stack.default, ([low, high, bound],)))
        _replace_index(node, path, safe)
        checks.append(IndexCheck(node.name, str(node.target), model_source(node), negative))
    output = guarded.output_node
    with fx_graph.inserting_before(output):
        together = fx_graph.call_function(aten.cat.default, (reports,))
    output.args = (tuple(output.args[0]) + (together,),)
    return guarded.finalize(), checks


def _replace_index(node: fx.Node, path: tuple, safe: fx.Node) -> None:
    args = list(node.args)
    if len(path) == 1:
        args[path[0]] = safe
    else:
        indices = list(args[path[0]])
        indices[path[1]] = safe
        args[path[0]] = indices
    node.args = tuple(args)
