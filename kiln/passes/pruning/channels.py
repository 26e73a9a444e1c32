"""Structured channel pruning on the IR: removes whole output channels of convolutions and linear
layers, and the matching input channels of everything that reads them.

Dependency analysis: every producer (a conv2d or linear with constant weights) opens a channel
space; ops that keep channels where they are (activations, pooling, batch norm, dropout, spatial
means, depthwise convolutions, flatten) carry it on; a residual add or multiply of two spaces
joins them (their channels must be pruned alike); a convolution or linear reading a space is its
consumer (input channels pruned; after flatten, in blocks of H×W features). A space that reaches
anything else (the graph's output, a concat, a reshape Kiln cannot follow) is left whole.

Importance: the L1 (or L2) norm of each channel's filters, the scale of its batch norm, or a
data-driven first-order Taylor score; summed over a space's producers, each normalized. Kept
channel counts are rounded to the nearest multiple of `align` (the target's vector width by
default), so that pruning never leaves the odd counts that vectorize badly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F

from kiln.passes.batches import split_batch
from kiln.errors import PassError
from kiln.ir.graph import Graph
from kiln.passes.registry import Outcome, register_pass
from kiln.progress import progress
from kiln.passes.rewrite import conv2d_options, is_constant, slice_constant

aten = torch.ops.aten

ELEMENTWISE = {  # ops that keep every channel where it is, whatever the channel axis
    aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default, aten.hardswish.default,
    aten.gelu.default, aten.silu.default, aten.sigmoid.default, aten.tanh.default, aten.dropout.default,
    aten.clone.default, aten.contiguous.default,
}
PER_CHANNEL = {  # ops that keep channels on axis 1 of an image (N, C, H, W)
    aten.max_pool2d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.batch_norm.default,
}
JOINERS = {aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor}
FLATTENERS = {aten.flatten.using_ints, aten.view.default, aten.reshape.default}


@dataclass
class _Space:
    """Channels that must be pruned together, and every place that holds them."""

    channels: int
    axis: int  # 1 for images (N, C, H, W) and (N, C); -1 for the features of (..., L, C)
    producers: list[fx.Node] = field(default_factory=list)  # output channels: weight[keep], bias[keep]
    depthwise: list[fx.Node] = field(default_factory=list)  # weight[keep], bias[keep], groups = keep
    consumers: list[tuple[fx.Node, int]] = field(default_factory=list)  # (conv/linear, features per channel)
    norms: list[fx.Node] = field(default_factory=list)  # batch norms: their four vectors
    constants: list[tuple[fx.Node, int, int]] = field(default_factory=list)  # (joiner, operand index, channel axis)
    reshapes: list[fx.Node] = field(default_factory=list)  # views to (N, C·H·W): their size becomes -1
    blocked: bool = False


class _Spaces:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.spaces: dict[int, _Space] = {}

    def new(self, channels: int, axis: int) -> int:
        key = len(self.parent)
        self.parent[key], self.spaces[key] = key, _Space(channels, axis)
        return key

    def find(self, key: int) -> int:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def get(self, key: int) -> _Space:
        return self.spaces[self.find(key)]

    def join(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            first, second = self.spaces[a], self.spaces.pop(b)
            first.blocked |= second.blocked or first.channels != second.channels or first.axis != second.axis
            for name in ("producers", "depthwise", "consumers", "norms", "constants", "reshapes"):
                getattr(first, name).extend(getattr(second, name))
            self.parent[b] = a
        return a


def _shape(node) -> tuple:
    return tuple(node.meta["val"].shape) if isinstance(node, fx.Node) and "val" in node.meta else ()


def _is_producer(node: fx.Node) -> bool:
    if node.target == aten.conv2d.default:
        return is_constant(node.args[1]) and conv2d_options(node)[3] == 1
    return node.target == aten.linear.default and is_constant(node.args[1])


def _is_depthwise(node: fx.Node) -> bool:
    groups = conv2d_options(node)[3] if node.target == aten.conv2d.default else 1
    return node.target == aten.conv2d.default and groups > 1 and groups == _shape(node.args[0])[1] == _shape(node)[1]


def _analyse(graph: Graph) -> list[_Space]:
    spaces = _Spaces()
    space_of: dict[fx.Node, tuple[int, int]] = {}  # node -> (space, features per channel)
    for node in graph.module.graph.nodes:
        carried = [(arg, space_of[arg]) for arg in node.all_input_nodes if arg in space_of]
        if node.op == "call_function" and _is_depthwise(node) and node.args[0] in space_of and not carried[1:]:
            key, _ = space_of[node.args[0]]
            spaces.get(key).depthwise.append(node)
            space_of[node] = (key, 1)
            continue
        if node.op == "call_function" and _is_producer(node):
            if node.args[0] in space_of:
                key, factor = space_of[node.args[0]]
                space = spaces.get(key)
                rank = len(_shape(node.args[0]))
                reads_channels = space.axis == 1 and rank == 4 if node.target == aten.conv2d.default else space.axis == -1 or rank == 2
                if reads_channels:
                    space.consumers.append((node, factor))
                else:
                    space.blocked = True
            key = spaces.new(_shape(node)[1], 1) if node.target == aten.conv2d.default or len(_shape(node)) == 2 else spaces.new(_shape(node)[-1], -1)
            spaces.get(key).producers.append(node)
            space_of[node] = (key, 1)
            continue
        if not carried:
            continue
        (first, (key, factor)), others = carried[0], carried[1:]
        image = spaces.get(key).axis == 1 and len(_shape(first)) == 4
        identity = node.target in FLATTENERS and _shape(node) == _shape(first)
        if (node.target in ELEMENTWISE or node.target in PER_CHANNEL and image or identity) and first is node.args[0] and not others:
            if node.target == aten.batch_norm.default:
                spaces.get(key).norms.append(node)
            space_of[node] = (key, factor)
        elif node.target == aten.mean.dim and image and first is node.args[0] and all(d % len(_shape(first)) >= 2 for d in node.args[1]):
            space_of[node] = (key, factor)
        elif node.target in JOINERS and len(node.args) == 2:
            for index, operand in enumerate(node.args):
                if operand in space_of:
                    key = spaces.join(key, space_of[operand][0])
                elif isinstance(operand, fx.Node):
                    _join_constant(spaces.get(key), node, index, len(_shape(node)))
            space_of[node] = (key, factor)
        elif node.target in FLATTENERS and image and len(_shape(node)) == 2:
            height, width = _shape(first)[2:]
            if node.target != aten.flatten.using_ints:
                spaces.get(key).reshapes.append(node)
            space_of[node] = (key, factor * height * width)
        else:
            for _, (key, _) in carried:
                spaces.get(key).blocked = True
    for node in graph.output_node.all_input_nodes:
        if node in space_of:
            spaces.get(space_of[node][0]).blocked = True
    return [space for space in spaces.spaces.values() if not space.blocked]


def _join_constant(space: _Space, node: fx.Node, index: int, rank: int) -> None:
    """A per-channel constant operand is sliced with the channels; a broadcast scalar-like one
    needs nothing; any other tensor operand blocks the space."""
    operand = node.args[index]
    shape = _shape(operand)
    axis = (1 if space.axis == 1 else rank - 1) - (rank - len(shape))
    if is_constant(operand) and (not shape or 0 <= axis < len(shape) and shape[axis] == 1 or axis < 0):
        return
    if is_constant(operand) and 0 <= axis < len(shape) and shape[axis] == space.channels:
        space.constants.append((node, index, axis))
        return
    space.blocked = True


CRITERIA = ("l1", "l2", "bn_scale", "taylor")


def _importance(graph: Graph, space: _Space, criterion: str, taylor: dict[fx.Node, torch.Tensor]) -> torch.Tensor:
    """Each producer's (or batch norm's) scores normalized to sum 1, then summed over the space."""
    if criterion == "bn_scale" and space.norms:
        scores = [graph.constant(norm.args[1]).float().abs() for norm in space.norms if norm.args[1] is not None]
    elif criterion == "taylor":
        scores = [taylor[node] for node in space.producers + space.depthwise]
    else:
        weights = [graph.constant(node.args[1]).float().flatten(1) for node in space.producers + space.depthwise]
        scores = [w.pow(2).sum(1).sqrt() if criterion == "l2" else w.abs().sum(1) for w in weights]
    return sum(score / score.sum().clamp(min=1e-12) for score in scores)


def _taylor_scores(graph: Graph, layers: list[fx.Node], data: Iterable[Any]) -> dict[fx.Node, torch.Tensor]:
    """First-order Taylor importance (Molchanov et al. 2019): per output channel, (Σ w·∂L/∂w)²
    summed over the batches, L the cross-entropy against the labels (or, without labels, against
    the model's own predictions)."""
    leaves = {layer.args[1].target: graph.constant(layer.args[1]).detach().float().clone().requires_grad_() for layer in layers}
    totals = {name: torch.zeros(leaf.shape[0]) for name, leaf in leaves.items()}
    for batch in progress(data, "Taylor importance batches"):
        inputs, labels = split_batch(batch)
        logits = torch.func.functional_call(graph.module, leaves, tuple(graph.flatten_inputs(inputs)))[0]
        if logits.dim() != 2:
            raise PassError(f"prune_channels: criterion 'taylor' needs a classifier; the first output has shape {tuple(logits.shape)}, not (batch, classes)")
        loss = F.cross_entropy(logits, labels if labels is not None else logits.argmax(1))
        for (name, leaf), grad in zip(leaves.items(), torch.autograd.grad(loss, list(leaves.values()))):
            totals[name] += (leaf * grad).flatten(1).sum(1).detach() ** 2
    return {layer: totals[layer.args[1].target] for layer in layers}


def _prune(graph: Graph, space: _Space, keep: torch.Tensor) -> None:
    for node in space.producers + space.depthwise:
        slice_constant(graph, node, 1, keep, 0)
        slice_constant(graph, node, 2, keep, 0)
    for node in space.depthwise:
        node.update_arg(6, len(keep))
    for node, factor in space.consumers:
        features = (keep.unsqueeze(1) * factor + torch.arange(factor)).reshape(-1)
        slice_constant(graph, node, 1, features, 1)
    for node in space.norms:
        for index in range(1, 5):
            slice_constant(graph, node, index, keep, 0)
    for node, index, axis in space.constants:
        slice_constant(graph, node, index, keep, axis)
    for node in space.reshapes:
        node.update_arg(1, [node.args[1][0], -1])


@register_pass("prune_channels", "Structured pruning: remove the least important output channels of conv/linear layers, with every dependent layer", stage="compress")
def prune_channels(
    graph: Graph, ratio: float = 0.5, align: int = 8, criterion: str = "l1", data: Sequence[Any] | None = None,
) -> Outcome:
    if not 0.0 <= ratio < 1.0:
        raise PassError(f"prune_channels: ratio {ratio} must be in [0, 1): the fraction of channels removed")
    if criterion not in CRITERIA:
        raise PassError(f"prune_channels: unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    if criterion == "taylor" and not data:
        raise PassError("prune_channels: criterion 'taylor' needs data: calibration=[(x,), ...] or [(x, labels), ...]")
    spaces = _analyse(graph)
    taylor = {}
    if criterion == "taylor":
        taylor = _taylor_scores(graph, [node for space in spaces for node in space.producers + space.depthwise], data)
    removed, layers = 0, {}
    for space in spaces:
        kept = min(space.channels, max(align, round(space.channels * (1 - ratio) / align) * align))
        if kept >= space.channels:
            continue
        keep = torch.topk(_importance(graph, space, criterion, taylor), kept).indices.sort().values
        _prune(graph, space, keep)
        removed += space.channels - kept
        names = [node.name for node in space.producers + space.depthwise]
        layers[", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")] = f"{space.channels} → {kept} channels"
    return Outcome(removed, f"{removed} channels removed in {len(layers)} groups ({criterion})", layers)


@dataclass(frozen=True)
class Prune:
    """`kiln.compile(..., prune=Prune(ratio=0.5))`: remove that fraction of every prunable layer's
    channels and of every attention block's heads. `align=None` rounds kept channels to the
    target's vector width. `criterion="taylor"` ranks channels by data (compile's `calibration`
    batches, with labels where given); "bn_scale" by the batch norms' scales.
    `structured=False` zeroes that fraction of the weights instead (magnitude pruning, `scope`
    "layer" or "global"): smaller compressed artifacts, no faster kernels."""

    ratio: float = 0.5
    structured: bool = True
    align: int | None = None
    criterion: str = "l1"
    heads: bool = True
    scope: str = "layer"


def pruning_passes(prune: Prune | None, vector_lanes: int, data: Sequence[Any] | None = None) -> list[tuple[str, dict]]:
    if prune is None:
        return []
    if not prune.structured:
        return [("prune_magnitude", {"sparsity": prune.ratio, "scope": prune.scope}), ("dce", {})]
    options = {"ratio": prune.ratio, "align": prune.align or vector_lanes, "criterion": prune.criterion, "data": data}
    heads = [("prune_heads", {"ratio": prune.ratio})] if prune.heads else []
    return heads + [("prune_channels", options), ("dce", {})]
