"""Quantized Kiln IR in the form other runtimes read: ONNX's QDQ.

A static int8 layer (quantize → integer conv/matmul → scale → bias) becomes what ONNX Runtime,
TensorRT and OpenVINO recognize: QuantizeLinear → DequantizeLinear on the activation,
DequantizeLinear (per output channel) on the int8 weight, and the float conv/linear between
them. PyTorch's exporter writes PyTorch's `quantized_decomposed` ops as exactly those ONNX nodes.
Kiln's other integer ops (dynamic int8, weight-only int8/int4) have no QDQ spelling with the same
numbers, so they are traced into the ordinary ONNX ops of their reference implementation (Round,
Clip, Cast, MatMul, bit shifts), integer semantics preserved.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch.ao.quantization.fx._decomposed import quantized_decomposed_lib  # noqa: F401 - registers the ops

from kiln.ir import quantized_ops
from kiln.ir.graph import Graph

aten, kiln_ops, decomposed = torch.ops.aten, torch.ops.kiln, torch.ops.quantized_decomposed
UINT8, INT8 = (0, 255, torch.uint8), (-127, 127, torch.int8)
TRACED = {  # op → its Python reference, which torch.export traces into plain ops
    kiln_ops.quantize.default: quantized_ops.quantize._init_fn,
    kiln_ops.qconv2d.default: quantized_ops.qconv2d._init_fn,
    kiln_ops.qlinear.default: quantized_ops.qlinear._init_fn,
    kiln_ops.quantize_dynamic.default: quantized_ops.quantize_dynamic._init_fn,
    kiln_ops.linear_weight_only.default: quantized_ops.linear_weight_only._init_fn,
}


def _scaled_by_constant(node: fx.Node) -> fx.Node | None:
    """The `mul(node, constant)` that turns an integer accumulation into float, if that is its only use."""
    users = list(node.users)
    if len(users) == 1 and users[0].target == aten.mul.Tensor and users[0].args[0] is node and getattr(users[0].args[1], "op", None) == "get_attr":
        return users[0]
    return None


def _rewrite_static_layer(graph: Graph, layer: fx.Node) -> bool:
    quantized, zero_point, weight = layer.args[:3]
    scaled = _scaled_by_constant(layer)
    if scaled is None or quantized.target != kiln_ops.quantize.default:
        return False
    scale = quantized.args[1]
    weight_scale = (graph.constant(scaled.args[1]).reshape(-1) / scale).float()
    g = graph.module.graph
    with g.inserting_before(layer):
        activation = g.call_function(decomposed.dequantize_per_tensor.default, (quantized, scale, zero_point, *UINT8))
        zeros = graph.add_constant(torch.zeros(weight_scale.numel(), dtype=torch.int64), f"{weight.name}_zero_points", before=layer)
        scales = graph.add_constant(weight_scale, f"{weight.name}_scales", before=layer)
        real_weight = g.call_function(decomposed.dequantize_per_channel.default, (weight, scales, zeros, 0, *INT8))
        if layer.target == kiln_ops.qconv2d.default:
            stride, padding, dilation, groups = layer.args[3:7]
            result = g.call_function(aten.conv2d.default, (activation, real_weight, None, stride, padding, dilation, groups))
        else:
            result = g.call_function(aten.linear.default, (activation, real_weight))
    scaled.replace_all_uses_with(result)
    g.erase_node(scaled)
    g.erase_node(layer)
    return True


def _pool_in_float(graph: Graph, pool: fx.Node) -> None:
    """A max-pool on uint8 (kiln/passes/quantization/integer_regions.py) as QDQ spells it:
    DequantizeLinear → MaxPool → QuantizeLinear, which ONNX Runtime fuses back into uint8 pooling."""
    quantized = pool.args[0]
    g = graph.module.graph
    with g.inserting_before(pool):
        real = g.call_function(decomposed.dequantize_per_tensor.default, (quantized, *quantized.args[1:], *UINT8))
    pool.replace_input_with(quantized, real)
    with g.inserting_after(pool):
        again = g.call_function(kiln_ops.quantize.default, (pool, *quantized.args[1:]))
    pool.replace_all_uses_with(again, delete_user_cb=lambda user: user is not again)


def as_qdq(graph: Graph) -> Graph:
    """A copy of `graph` in which quantized layers are QDQ (see the module's docstring)."""
    graph = graph.copy()
    for pool in graph.module.graph.find_nodes(op="call_function", target=aten.max_pool2d.default):
        if pool.args[0].target == kiln_ops.quantize.default:
            _pool_in_float(graph, pool)
    for node in graph.module.graph.find_nodes(op="call_function", target=kiln_ops.dequantize.default):
        node.target, node.args = decomposed.dequantize_per_tensor.default, (*node.args, *UINT8)
    for layer in [n for n in graph.module.graph.nodes if n.target in (kiln_ops.qconv2d.default, kiln_ops.qlinear.default)]:
        _rewrite_static_layer(graph, layer)
    for node in list(graph.module.graph.nodes):
        if node.target == kiln_ops.quantize.default and node.users and all(
            u.target == decomposed.dequantize_per_tensor.default for u in node.users
        ):
            node.target, node.args = decomposed.quantize_per_tensor.default, (*node.args, *UINT8)
        elif node.target in TRACED:
            node.target = TRACED[node.target]
    graph.module.graph.eliminate_dead_code()
    return graph.finalize()
