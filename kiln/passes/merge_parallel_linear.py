"""Merge linear layers that read the same input into one wider linear (Q/K/V in attention).

One (N×K)·(K×3M) product keeps the input in cache once and gives the backend one large matmul to
schedule instead of three medium ones; slices of the result feed the original users.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.fx as fx

from kiln.ir.graph import Graph
from kiln.ir.stats import op_name
from kiln.passes.registry import register_pass
from kiln.passes.rewrite import is_constant

aten = torch.ops.aten


def _bias(node: fx.Node) -> fx.Node | None:
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")


def _mergeable(node: fx.Node) -> bool:
    bias = _bias(node)
    return (
        node.op == "call_function"
        and op_name(node) == "aten.linear"
        and is_constant(node.args[1])
        and (bias is None or is_constant(bias))
    )


def _merge(graph: Graph, group: list[fx.Node]) -> None:
    weights = [graph.constant(n.args[1]) for n in group]
    biases = [
        graph.constant(_bias(n)) if _bias(n) is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        for n, w in zip(group, weights)
    ]
    first = group[0]
    fx_graph = graph.module.graph
    weight = graph.add_constant(torch.cat(weights), f"{first.args[1].name}_merged", before=first)
    bias = graph.add_constant(torch.cat(biases), f"{first.args[1].name}_merged_bias", before=first)
    with fx_graph.inserting_before(first):
        merged = fx_graph.call_function(aten.linear.default, (first.args[0], weight, bias))
    merged.meta = {k: v for k, v in first.meta.items() if k != "val"}
    start, cursor = 0, merged
    last_dim = first.meta["val"].dim() - 1  # positive: TVM's strided_slice rejects negative axes
    for node, w in zip(group, weights):
        with fx_graph.inserting_after(cursor):
            cursor = fx_graph.call_function(aten.slice.Tensor, (merged, last_dim, start, start + w.shape[0]))
        cursor.meta = dict(node.meta)
        start += w.shape[0]
        node.replace_all_uses_with(cursor)
        fx_graph.erase_node(node)


@register_pass("merge_parallel_linear", "Merge linear layers sharing an input (e.g. Q/K/V) into one wider linear", preserves_values=True)
def merge_parallel_linear(graph: Graph, min_group: int = 2) -> int:
    groups: dict[tuple, list[fx.Node]] = defaultdict(list)
    for node in graph.module.graph.nodes:  # graph order: the first of a group comes first
        if _mergeable(node):
            weight = node.meta["val"]
            groups[(node.args[0], weight.dtype, graph.constant(node.args[1]).shape[1])].append(node)
    merged = 0
    for group in groups.values():
        if len(group) >= min_group:
            _merge(graph, group)
            merged += len(group)
    return merged
