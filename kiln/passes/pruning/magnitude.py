"""Unstructured magnitude pruning: the smallest weights of every conv and linear layer become 0,
a fraction `sparsity` of each layer ("layer") or of all of them under one threshold ("global").

No target Kiln compiles for has a sparse kernel that beats its dense one at the sparsities that
keep accuracy (TVM 0.27's sparse dense needs block-sparse weights and a tuned schedule), so the
layers stay dense: the saving is the compressed size of the weights (zeros deflate in the
`.kiln` artifact), and the report says so.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from kiln.errors import PassError
from kiln.ir.graph import Graph
from kiln.passes.registry import Outcome, register_pass
from kiln.passes.rewrite import is_constant

aten = torch.ops.aten
SCOPES = ("layer", "global")


def _layers(graph: Graph) -> list[fx.Node]:
    return [
        node for node in graph.module.graph.nodes
        if node.op == "call_function" and node.target in (aten.conv2d.default, aten.linear.default) and is_constant(node.args[1])
    ]


def _kth_smallest(values: torch.Tensor, fraction: float) -> float:
    count = int(fraction * values.numel())
    return values.kthvalue(count).values.item() if count else -1.0


@register_pass("prune_magnitude", "Unstructured pruning: zero the smallest-magnitude weights of conv/linear layers (compression only)", stage="compress")
def prune_magnitude(graph: Graph, sparsity: float = 0.5, scope: str = "layer") -> Outcome:
    if not 0.0 <= sparsity < 1.0:
        raise PassError(f"prune_magnitude: sparsity {sparsity} must be in [0, 1)")
    if scope not in SCOPES:
        raise PassError(f"prune_magnitude: unknown scope '{scope}'; choose one of {', '.join(SCOPES)}")
    layers = _layers(graph)
    weights = {node: graph.constant(node.args[1]).detach() for node in layers}
    if scope == "global" and layers:
        everything = torch.cat([w.detach().abs().float().reshape(-1) for w in weights.values()])
        threshold = _kth_smallest(everything, sparsity)
    zeroed, total, report = 0, 0, {}
    for node in layers:
        weight = weights[node]
        magnitude = weight.detach().abs().float()
        cut = threshold if scope == "global" else _kth_smallest(magnitude.reshape(-1), sparsity)
        pruned = torch.where(magnitude <= cut, torch.zeros_like(weight), weight)
        node.update_arg(1, graph.add_constant(pruned, f"{node.args[1].name}_sparse", before=node))
        zeros = int((pruned == 0).sum())
        zeroed, total = zeroed + zeros, total + weight.numel()
        report[node.name] = f"{zeros / weight.numel():.1%} zero ({zeros:,} of {weight.numel():,})"
    note = f"{zeroed / max(total, 1):.1%} of conv/linear weights zero; dense kernels (no sparse kernel pays here): compression only"
    return Outcome(len(report), note, report)
