"""Fold inference-mode batch norm into the convolution or linear layer that feeds it.

BN(conv(x, W, b)) = conv(x, W·s, (b − μ)·s + β) with s = γ / √(σ² + ε), per output channel.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from kiln.ir.graph import Graph
from kiln.ir.stats import op_name
from kiln.passes.registry import register_pass
from kiln.passes.rewrite import apply_rewrites, is_constant

aten = torch.ops.aten

# Ops whose output channel is dim 1 and whose args are (input, weight, bias, ...).
PRODUCERS = {"aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.linear"}


def _fold(graph: Graph, bn: fx.Node) -> fx.Node | None:
    x, gamma, beta, mean, var, training, _momentum, eps = bn.args[:8]
    producer = x
    if training or not isinstance(producer, fx.Node) or op_name(producer) not in PRODUCERS:
        return None
    if len(producer.users) != 1 or not all(is_constant(t) or t is None for t in (gamma, beta, mean, var)):
        return None
    weight_node = producer.args[1]
    bias_node = producer.args[2] if len(producer.args) > 2 else producer.kwargs.get("bias")
    if not is_constant(weight_node) or not (bias_node is None or is_constant(bias_node)):
        return None
    if op_name(producer) == "aten.linear" and producer.meta["val"].dim() != 2:
        return None  # BN1d over a (N, C) linear output only; (N, L, C) puts channels last

    weight = graph.constant(weight_node)
    channels = weight.shape[0]
    # folded in fp32 and stored in the layer's dtype: fp16/bf16 layers stay fp16/bf16
    constant = lambda node, fill: (graph.constant(node) if node is not None else torch.full((channels,), fill)).float()
    scale = constant(gamma, 1.0) / torch.sqrt(constant(var, 1.0) + eps)
    bias = constant(bias_node, 0.0)
    new_weight = (weight.float() * scale.reshape(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)
    new_bias = ((bias - constant(mean, 0.0)) * scale + constant(beta, 0.0)).to(weight.dtype)

    new_args = list(producer.args) + [None] * max(0, 3 - len(producer.args))
    new_args[1] = graph.add_constant(new_weight, f"{weight_node.name}_bn", before=producer)
    new_args[2] = graph.add_constant(new_bias, f"{weight_node.name}_bn_bias", before=producer)
    with graph.module.graph.inserting_after(producer):
        folded = graph.module.graph.call_function(producer.target, tuple(new_args), dict(producer.kwargs))
    folded.meta = dict(producer.meta)
    return folded


@register_pass("fold_batch_norm", "Fold inference batch norm into the preceding conv/linear weights and bias", preserves_values=True)
def fold_batch_norm(graph: Graph) -> int:
    return apply_rewrites(graph, {"aten.batch_norm": _fold})
