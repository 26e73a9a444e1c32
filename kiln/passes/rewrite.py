"""Pattern → rewrite tables, shared by the local passes.

A table maps an op name (`aten.dropout`) to a function `(graph, node) -> replacement | None`.
`apply_rewrites` walks the graph once in order, replaces each node for which the function returns
a replacement, and erases what that leaves dead.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from kiln.ir.graph import Graph
from kiln.ir.stats import op_name

RewriteRule = Callable[[Graph, fx.Node], "fx.Node | None"]


def apply_rewrites(graph: Graph, table: dict[str, RewriteRule]) -> int:
    changes = 0
    for node in list(graph.module.graph.nodes):
        if node.op != "call_function" or node.graph is not graph.module.graph:
            continue
        rule = table.get(op_name(node))
        if rule is None:
            continue
        replacement = rule(graph, node)
        if replacement is None or replacement is node:
            continue
        node.replace_all_uses_with(replacement)
        inputs = node.all_input_nodes
        # the rule vouched that the node is redundant, so it goes even if fx deems it impure (dropout)
        graph.module.graph.erase_node(node)
        for producer in inputs:
            erase_if_dead(producer)
        changes += 1
    return changes


def is_pure(node: fx.Node) -> bool:
    """A node passes may fold, merge or drop: no side effect, and no input written in place
    (`add_`: folding it would overwrite a weight, merging two would apply it once)."""
    schema = getattr(node.target, "_schema", None)
    mutates = schema is not None and schema.is_mutable
    return node.op in ("call_function", "get_attr") and not node.is_impure() and not mutates


def erase_if_dead(node: fx.Node) -> None:
    """Erase `node` if nothing uses it, then its inputs that become unused in turn."""
    if node.users or not is_pure(node):
        return
    inputs = list(node.all_input_nodes)
    node.graph.erase_node(node)
    for producer in inputs:
        erase_if_dead(producer)


def shape_of(node: fx.Node) -> tuple:
    return tuple(node.meta["val"].shape)


def is_constant(node: object) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def conv2d_options(node: fx.Node) -> tuple[list[int], list[int], list[int], int]:
    """(stride, padding, dilation, groups) of an aten.conv2d node, defaults filled in."""
    stride, padding, dilation = (list(node.args[i]) if i < len(node.args) else d for i, d in ((3, [1, 1]), (4, [0, 0]), (5, [1, 1])))
    return stride, padding, dilation, node.args[6] if len(node.args) > 6 else 1


def slice_constant(graph: Graph, node: fx.Node, index: int, keep: torch.Tensor, dim: int) -> None:
    """Replace constant argument `index` of `node` (if given) by its `keep` entries along `dim`."""
    argument = node.args[index] if index < len(node.args) else None
    if argument is not None:
        sliced = graph.constant(argument).index_select(dim, keep).contiguous()
        node.update_arg(index, graph.add_constant(sliced, f"{argument.name}_pruned", before=node))


def same_shape(a: fx.Node, b: fx.Node) -> bool:
    """True when both shapes are provably equal, symbolic dims included."""
    sa, sb = shape_of(a), shape_of(b)
    return len(sa) == len(sb) and all(_same_dim(x, y) for x, y in zip(sa, sb))


def _same_dim(x, y) -> bool:
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    if isinstance(x, torch.SymInt) and isinstance(y, torch.SymInt):
        return x.node.expr == y.node.expr
    return False
