"""Attention-head pruning on the IR: removes whole heads of every attention block, whatever wrote it
(`nn.MultiheadAttention`, hand-written q/k/v layers, an imported ONNX graph).

An attention block is found at its `scaled_dot_product_attention`, or at softmax(q·kᵀ)·v written
out in matmuls (eager Hugging Face attention, ONNX imports): q, k and v are followed back
through shape-only ops (reshape, transpose, select, ...) to the linear layers that project them,
and the output forward to the linear layer that reads it. Which projection features belong to
which head is not guessed from the code's shapes but computed: the shape ops are run on a tensor
of feature indices, so the index that lands in q[b, h, l, d] names the feature. The same trick,
run on head numbers, shows which dimension of every reshape in the chain holds the heads, so
those sizes can shrink with them.

Importance of a head: the L1 norm of its q/k/v rows and its output-projection columns (each
normalized by its layer's total).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from kiln.errors import PassError
from kiln.ir.graph import Graph
from kiln.passes.registry import Outcome, register_pass
from kiln.passes.rewrite import is_constant, shape_of, slice_constant

aten = torch.ops.aten
SHAPE_OPS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unflatten.int, aten.flatten.using_ints,
    aten.transpose.int, aten.permute.default, aten.select.int, aten.squeeze.dim, aten.squeeze.dims,
    aten.unsqueeze.default, aten.contiguous.default, aten.clone.default,
}
SCALINGS = {aten.mul.Tensor, aten.div.Tensor}  # by a Python number: the identity on indices
SIZED = {aten.view.default: 1, aten.reshape.default: 1, aten._unsafe_view.default: 1, aten.unflatten.int: 2}


@dataclass
class _Attention:
    attention: fx.Node
    heads: int
    projections: dict[fx.Node, torch.Tensor] = field(default_factory=dict)  # linear -> head of each output feature
    output: fx.Node | None = None  # the linear reading the heads
    output_heads: torch.Tensor | None = None  # head of each of its input features
    sized: dict[fx.Node, int] = field(default_factory=dict)  # reshape -> dimension holding the heads


def _is_projection(node: object) -> bool:
    return (
        isinstance(node, fx.Node) and node.target == aten.linear.default and is_constant(node.args[1])
        and (len(node.args) < 3 or node.args[2] is None or is_constant(node.args[2]))
    )


def _run(chain: list[fx.Node], values: torch.Tensor) -> dict[fx.Node, torch.Tensor]:
    """`values` pushed through `chain` (its shape ops; scalings pass it on): each node's result."""
    results = {}
    for node in chain:
        if node.target not in SCALINGS:
            values = node.target(values, *node.args[1:], **node.kwargs)
        results[node] = values
    return results


def _chain_back(node: object) -> tuple[fx.Node, list[fx.Node]] | None:
    chain = []
    while isinstance(node, fx.Node) and (
        node.target in SHAPE_OPS or node.target in SCALINGS and isinstance(node.args[1], (int, float))
    ):
        chain.append(node)
        node = node.args[0]
    return (node, chain[::-1]) if _is_projection(node) else None


def _chain_forward(node: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    chain = []
    while len(node.users) == 1:
        (user,) = node.users
        if _is_projection(user) and user.args[0] is node:
            return user, chain
        if user.target not in SHAPE_OPS or user.args[0] is not node:
            return None
        chain.append(user)
        node = user
    return None


def _varying_dim(values: torch.Tensor) -> int | None:
    """The one dimension along which `values` (head numbers) change, if there is exactly one."""
    dims = [d for d in range(values.dim()) if values.shape[d] > 1 and not torch.equal(values, values.narrow(d, 0, 1).expand_as(values))]
    return dims[0] if len(dims) == 1 else None


@dataclass
class _Core:
    """Where heads meet: q, k, v ([B, H, L, D]; k may arrive transposed) and the node that
    returns [B, H, L, D], with the nodes in between (scores, scaling, mask, softmax)."""

    output: fx.Node
    q: fx.Node
    k: fx.Node
    k_order: tuple[int, ...]
    v: fx.Node
    inner: set[fx.Node] = field(default_factory=set)


def _broadcast_over_heads(mask: object) -> bool:
    return not isinstance(mask, fx.Node) or len(shape_of(mask)) < 3 or shape_of(mask)[-3] == 1


def _fused_core(node: fx.Node) -> _Core | None:
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if node.kwargs.get("enable_gqa") or not _broadcast_over_heads(mask):
        return None
    return _Core(node, node.args[0], node.args[1], (0, 1, 2, 3), node.args[2])


def _written_out_core(node: fx.Node) -> _Core | None:
    """softmax(q @ kᵀ · scale + mask) @ v, as eager attention (Hugging Face, ONNX imports) writes it."""
    if len(shape_of(node)) != 4:
        return None
    probabilities, inner = node.args[0], {node}
    while isinstance(probabilities, fx.Node) and probabilities.target != aten.matmul.default:
        target, args = probabilities.target, probabilities.args
        inner.add(probabilities)
        if target in (aten.softmax.int, aten._softmax.default, aten.dropout.default, aten.clone.default):
            probabilities = args[0]
        elif target in SCALINGS and isinstance(args[1], (int, float)):
            probabilities = args[0]
        elif target == aten.add.Tensor:
            scores, mask = (args[0], args[1]) if shape_of(args[0]) == shape_of(probabilities) else (args[1], args[0])
            if not _broadcast_over_heads(mask):
                return None
            probabilities = scores
        else:
            return None
    if not isinstance(probabilities, fx.Node) or len(shape_of(probabilities)) != 4:
        return None
    inner.add(probabilities)
    return _Core(node, probabilities.args[0], probabilities.args[1], (0, 1, 3, 2), node.args[1], inner)


def _cores(graph: Graph) -> list[_Core]:
    found = []
    for node in graph.module.graph.nodes:
        if node.target == aten.scaled_dot_product_attention.default:
            core = _fused_core(node)
        elif node.target == aten.matmul.default:
            core = _written_out_core(node)
        else:
            continue
        if core is not None:
            found.append(core)
    return found


def _find(core: _Core) -> _Attention | None:
    operands = [(core.q, (0, 1, 2, 3)), (core.k, core.k_order), (core.v, (0, 1, 2, 3))]
    shapes = [tuple(shape_of(t)[d] for d in order) if len(shape_of(t)) == 4 else () for t, order in operands]
    if any(len(s) != 4 or not all(isinstance(d, int) for d in s) for s in shapes):
        return None
    heads = shapes[0][1]
    if heads < 2 or any(s[1] != heads for s in shapes):
        return None
    node = core.output
    found = _Attention(node, heads)
    features: dict[fx.Node, torch.Tensor] = {}
    region: set[fx.Node] = set()
    chains: list[tuple[fx.Node, list[fx.Node]]] = []
    for operand, order in operands:
        traced = _chain_back(operand)
        if traced is None:
            return None
        projection, chain = traced
        chains.append(traced)
        if not all(isinstance(d, int) for d in shape_of(projection)):
            return None
        out_features = shape_of(projection)[-1]
        index = torch.arange(out_features).expand(shape_of(projection))
        landed = (_run(chain, index)[chain[-1]] if chain else index).permute(order)
        if not torch.equal(landed, landed[:1, :, :1, :].expand_as(landed)):
            return None  # a feature's place must not depend on batch or position
        head_of = features.setdefault(projection, torch.full((out_features,), -1))
        for head in range(heads):
            if (head_of[landed[0, head, 0]] != -1).any():
                return None
            head_of[landed[0, head, 0]] = head
        region.update(chain)
        region.add(projection)
    for projection, head_of in features.items():
        if (head_of < 0).any():
            return None  # features that feed no head: not a pure attention projection
        found.projections[projection] = head_of
    for projection, chain in chains:  # reshapes between a projection and q/k/v: which dim holds heads
        for reshape, heads_there in _run(chain, features[projection].expand(shape_of(projection))).items():
            if reshape.target in SIZED and not _record_sized(found, reshape, heads_there):
                return None
    if any(not set(n.users) <= region | core.inner | {node} for n in region):
        return None  # something else reads the projections
    traced = _chain_forward(node)
    if traced is None:
        return None
    found.output, chain = traced
    batch, _, length, width = shape_of(node)
    place = torch.arange(heads * width).reshape(1, heads, 1, width).expand(batch, heads, length, width)
    landed = (_run(chain, place)[chain[-1]] if chain else place).reshape(-1, shape_of(found.output.args[0])[-1])
    if not torch.equal(landed, landed[:1].expand_as(landed)):
        return None
    found.output_heads = landed[0] // width
    head_numbers = torch.arange(heads).reshape(1, heads, 1, 1).expand(batch, heads, length, width)
    for reshape, heads_there in _run(chain, head_numbers).items():
        if reshape.target in SIZED and not _record_sized(found, reshape, heads_there):
            return None
    return found


def _record_sized(found: _Attention, reshape: fx.Node, heads_there: torch.Tensor) -> bool:
    dim = _varying_dim(heads_there)
    if dim is None or shape_of(reshape)[dim] % found.heads:
        return False
    found.sized[reshape] = dim
    return True


def _importance(graph: Graph, found: _Attention) -> torch.Tensor:
    score = torch.zeros(found.heads)
    for projection, head_of in found.projections.items():
        rows = graph.constant(projection.args[1]).float().abs().sum(1)
        score.index_add_(0, head_of, rows / rows.sum().clamp(min=1e-12))
    columns = graph.constant(found.output.args[1]).float().abs().sum(0)
    score.index_add_(0, found.output_heads, columns / columns.sum().clamp(min=1e-12))
    return score


def _prune(graph: Graph, found: _Attention, kept_heads: torch.Tensor) -> None:
    kept = torch.zeros(found.heads, dtype=torch.bool)
    kept[kept_heads] = True
    for projection, head_of in found.projections.items():
        rows = kept[head_of].nonzero().flatten()
        slice_constant(graph, projection, 1, rows, 0)
        slice_constant(graph, projection, 2, rows, 0)
    slice_constant(graph, found.output, 1, kept[found.output_heads].nonzero().flatten(), 1)
    for reshape, dim in found.sized.items():
        sizes = list(shape_of(reshape))
        sizes[dim] = sizes[dim] // found.heads * len(kept_heads)
        index = SIZED[reshape.target]
        if reshape.target == aten.unflatten.int:
            start = reshape.args[1] % len(shape_of(reshape.args[0]))
            sizes = sizes[start: start + len(reshape.args[2])]
        reshape.update_arg(index, sizes)


@register_pass("prune_heads", "Structured pruning of attention: remove the least important heads of every attention block", stage="compress")
def prune_heads(graph: Graph, ratio: float = 0.5) -> Outcome:
    if not 0.0 <= ratio < 1.0:
        raise PassError(f"prune_heads: ratio {ratio} must be in [0, 1): the fraction of heads removed")
    blocks = [found for core in _cores(graph) for found in [_find(core)] if found is not None]
    layers = {}
    for found in blocks:
        kept = max(1, round(found.heads * (1 - ratio)))
        if kept < found.heads:
            keep = torch.topk(_importance(graph, found), kept).indices.sort().values
            _prune(graph, found, keep)
            layers[found.attention.name] = f"{found.heads} → {kept} heads (kept {keep.tolist()})"
    return Outcome(len(layers), f"{len(layers)} attention blocks pruned", layers)
