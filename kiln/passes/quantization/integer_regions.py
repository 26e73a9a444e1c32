"""Integer regions, not integer islands: int8 tensors stay uint8 from one layer to the next.

After `quantize_int8` each layer quantizes its own input, so the float tensor a layer produces is
written out whole and read back wherever something float reads it too: a residual's identity
branch, a max-pool between two convolutions. ONNX Runtime's QDQ fusion taught the fix:
1. A value that a quantize reads and float ops read as well is read by those as
   dequantize(quantize(value)): one uint8 tensor between the kernels (a quarter of the bytes), the
   dequantize done inside the consumer's kernel. The float reader then sees the value on the uint8
   grid, as ONNX Runtime's QLinearAdd does: a rounding of at most half a step.
2. quantize(max_pool(y)) = max_pool(quantize(y)) exactly (rounding to a grid and saturating keep
   order; padding is the type's minimum either way), so pooling runs on uint8 and the float
   tensor before it is never written.
The graph keeps one quantize where float becomes integer and one dequantize where it goes back.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from kiln.ir.graph import Graph
from kiln.ir.quantized_ops import dequantize  # noqa: F401 - registers torch.ops.kiln.dequantize
from kiln.passes.registry import Outcome, register_pass

aten, kiln_ops = torch.ops.aten, torch.ops.kiln
ORDER_PRESERVING = (aten.max_pool2d.default,)  # ops that commute with quantize


def _is_float(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32


def _share_quantized(graph: Graph, quantized: fx.Node) -> int:
    """Float readers of the quantize's input read its dequantized uint8 instead; how many."""
    value, scale, zero_point = quantized.args
    readers = [u for u in value.users if u.target != kiln_ops.quantize.default]
    if not readers or not _is_float(value) or any(u.op == "output" for u in value.users):
        return 0
    g = graph.module.graph
    with g.inserting_after(quantized):
        restored = g.call_function(kiln_ops.dequantize.default, (quantized, scale, zero_point))
    for reader in readers:
        reader.replace_input_with(value, restored)
    return len(readers)


def _quantize_before_pooling(graph: Graph, quantized: fx.Node) -> fx.Node | None:
    """quantize(max_pool(y)) → max_pool(quantize(y)) where the pooling has no other reader; the
    new quantize (which may sit after another pooling), or None."""
    pooled = quantized.args[0]
    if pooled.op != "call_function" or pooled.target not in ORDER_PRESERVING or len(pooled.users) != 1 or not _is_float(pooled.args[0]):
        return None
    g = graph.module.graph
    with g.inserting_before(pooled):
        early = g.call_function(kiln_ops.quantize.default, (pooled.args[0], *quantized.args[1:]))
    pooled.replace_input_with(pooled.args[0], early)
    quantized.replace_all_uses_with(pooled)
    g.erase_node(quantized)
    return early


@register_pass("integer_regions", "int8 tensors stay uint8 between layers: shared quantized values, uint8 max-pooling", stage="quantize")
def integer_regions(graph: Graph) -> Outcome:
    quantizes = [n for n in graph.module.graph.nodes if n.target == kiln_ops.quantize.default]
    shared = sum(_share_quantized(graph, quantized) for quantized in quantizes)
    pooled = 0
    for quantized in quantizes:
        while (quantized := _quantize_before_pooling(graph, quantized)) is not None:
            pooled += 1
    return Outcome(shared + pooled, f"{shared} float readers of int8 tensors read them dequantized, {pooled} max-pools on uint8")
