"""Constant folding: compute at compile time what depends only on weights."""

from __future__ import annotations

import torch
import torch.fx as fx

from kiln.ir.graph import Graph
from kiln.passes.registry import register_pass
from kiln.passes.rewrite import erase_if_dead, is_pure


def _foldable(node: fx.Node, max_growth: float) -> bool:
    if node.op != "call_function" or not is_pure(node) or not node.users:
        return False
    if not isinstance(node.target, torch._ops.OpOverload) or torch.Tag.nondeterministic_seeded in node.target.tags:
        return False
    if any(n.op != "get_attr" for n in node.all_input_nodes):
        return False
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or any(not isinstance(d, int) for d in value.shape):
        return False
    # Folding expand/repeat would store the expanded tensor: only fold what does not grow the weights.
    input_numel = sum(n.meta["val"].numel() for n in node.all_input_nodes)
    return value.numel() <= max(max_growth * input_numel, 1024)


@register_pass("fold_constants", "Evaluate ops whose inputs are all weights; store the result as a weight", preserves_values=True)
def fold_constants(graph: Graph, max_growth: float = 1.0) -> int:
    changes = 0
    for node in list(graph.module.graph.nodes):
        if node.graph is not graph.module.graph or not _foldable(node, max_growth):
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), graph.constant)
        with torch.no_grad():
            value = node.target(*args, **kwargs)
        folded = graph.add_constant(value, node.name, before=node)
        node.replace_all_uses_with(folded)
        erase_if_dead(node)
        changes += 1
    return changes
