"""Graph clean-up: dead-code and common-subexpression elimination."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from kiln.ir.graph import Graph
from kiln.passes.registry import register_pass
from kiln.passes.rewrite import is_pure


@register_pass("dce", "Remove nodes whose results nothing uses, and the weights only they read", preserves_values=True, stage="anywhere")
def dead_code_elimination(graph: Graph) -> int:
    before = len(graph.module.graph.nodes)
    graph.module.graph.eliminate_dead_code()
    return before - len(graph.module.graph.nodes)


def _key(value: Any) -> Any:
    """A hashable form of a node's arguments (lists become tuples, slices their fields)."""
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, slice):
        return ("slice", _key(value.start), _key(value.stop), _key(value.step))
    return value


@register_pass("cse", "Merge nodes that compute the same op on the same inputs", preserves_values=True, stage="anywhere")
def common_subexpression_elimination(graph: Graph) -> int:
    seen: dict[Any, fx.Node] = {}
    changes = 0
    for node in list(graph.module.graph.nodes):
        if not is_pure(node):
            continue
        key = (node.op, node.target, _key(node.args), _key(node.kwargs))
        try:
            original = seen.setdefault(key, node)
        except TypeError:  # an argument that cannot be hashed: leave the node alone
            continue
        if original is not node:
            node.replace_all_uses_with(original)
            graph.module.graph.erase_node(node)
            changes += 1
    return changes
