"""Remove ops that do nothing at inference: dropout, copies, identity reshapes and permutes,
reshape-of-reshape and permute-of-permute chains, and arithmetic identities (x·1, x+0)."""

from __future__ import annotations

import torch
import torch.fx as fx

from kiln.ir.graph import Graph
from kiln.ir.stats import op_name
from kiln.passes.registry import register_pass
from kiln.passes.rewrite import apply_rewrites, same_shape

aten = torch.ops.aten
RESHAPES = {"aten.reshape", "aten.view", "aten._unsafe_view", "aten.flatten", "aten.unflatten", "aten.squeeze", "aten.unsqueeze"}


def _input_if_same_shape(_graph: Graph, node: fx.Node) -> fx.Node | None:
    source = node.args[0]
    if isinstance(source, fx.Node) and same_shape(source, node) and source.meta["val"].dtype == node.meta["val"].dtype:
        return source
    return None


def _dropout(graph: Graph, node: fx.Node) -> fx.Node | None:
    training = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
    return None if training else node.args[0]


def _copy(_graph: Graph, node: fx.Node) -> fx.Node | None:
    # a view downstream of the copy may rely on its contiguity (view(select(contiguous(
    # transpose(x))))): as a reshape, it asks only for the values
    pending, seen = list(node.users), set()
    while pending:
        user = pending.pop()
        if user not in seen:
            seen.add(user)
            if user.target in (aten.view.default, aten._unsafe_view.default):
                user.target = aten.reshape.default
            pending.extend(user.users)
    return node.args[0]


def _reshape(graph: Graph, node: fx.Node) -> fx.Node | None:
    same = _input_if_same_shape(graph, node)
    if same is not None:
        return same
    source = node.args[0]
    if op_name(node) in ("aten.reshape", "aten.view") and isinstance(source, fx.Node) and op_name(source) in RESHAPES:
        # reshape(reshape(x)) is one reshape of x, or x itself
        origin = source.args[0]
        if same_shape(origin, node) and origin.meta["val"].dtype == node.meta["val"].dtype:
            return origin
        with graph.module.graph.inserting_before(node):
            merged = graph.module.graph.call_function(aten.reshape.default, (source.args[0], node.args[1]))
        merged.meta = dict(node.meta)
        return merged
    return None


def _permutation(node: fx.Node) -> list[int] | None:
    rank = node.meta["val"].dim()
    if op_name(node) == "aten.permute":
        return [d % rank for d in node.args[1]]
    if op_name(node) == "aten.transpose":
        a, b = node.args[1] % rank, node.args[2] % rank
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
        return order
    return None


def _permute(graph: Graph, node: fx.Node) -> fx.Node | None:
    order, source = _permutation(node), node.args[0]
    if order == list(range(len(order))):
        return source
    inner = _permutation(source) if isinstance(source, fx.Node) and source.op == "call_function" else None
    if inner is None:
        return None
    composed = [inner[i] for i in order]
    if composed == list(range(len(composed))):
        return source.args[0]
    with graph.module.graph.inserting_before(node):
        merged = graph.module.graph.call_function(aten.permute.default, (source.args[0], composed))
    merged.meta = dict(node.meta)
    return merged


def _identity_scalar(identity: float):
    def rule(graph: Graph, node: fx.Node) -> fx.Node | None:
        other = node.args[1]
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == identity:
            return _input_if_same_shape(graph, node)
        return None

    return rule


def _same_dtype_copy(graph: Graph, node: fx.Node) -> fx.Node | None:
    extra = set(node.kwargs) - {"dtype", "memory_format", "copy", "non_blocking", "layout", "device"}
    return None if extra or len(node.args) > 2 else _input_if_same_shape(graph, node)


NOOP_RULES = {
    "aten.dropout": _dropout,
    "aten.feature_dropout": _dropout,
    "aten.alpha_dropout": _dropout,
    "aten.clone": _copy,
    "aten.alias": _copy,
    "aten.detach": _copy,
    "aten.lift_fresh_copy": _copy,
    "aten.contiguous": _copy,
    "aten.to": _same_dtype_copy,
    "aten._to_copy": _same_dtype_copy,
    "aten.expand": _input_if_same_shape,
    **{name: _reshape for name in RESHAPES},
    "aten.permute": _permute,
    "aten.transpose": _permute,
    "aten.mul": _identity_scalar(1),
    "aten.div": _identity_scalar(1),
    "aten.add": _identity_scalar(0),
    "aten.sub": _identity_scalar(0),
}


@register_pass("remove_noops", "Drop inference no-ops: dropout, copies, identity and chained reshapes/permutes, x*1, x+0", preserves_values=True)
def remove_noops(graph: Graph) -> int:
    return apply_rewrites(graph, NOOP_RULES)
