"""Mixed precision: convolutions, linear layers and matmuls compute in float16 or bfloat16, with
half-width weights; everything numerically sensitive stays float32.

Only the compute-heavy ops change: their inputs are cast down, their weights stored in the half
type, their results cast back up. Softmax, normalizations, reductions, exponentials and the
residual stream therefore keep float32, where a 10-bit (fp16) or 7-bit (bf16) mantissa would
lose the most. A bias is added after the cast back, in float32. A convert pair left between two
half-precision layers (half → float → half) is exact and folds away.

Aimed at GPUs (tensor cores); on a CPU without native half arithmetic (AVX2) the casts cost time
and only the weight bytes shrink.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from kiln.errors import PassError
from kiln.ir.graph import Graph
from kiln.passes.registry import Outcome, register_pass
from kiln.passes.rewrite import is_constant

aten = torch.ops.aten
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
WEIGHTED = {aten.conv2d.default, aten.linear.default}
PRODUCTS = {aten.matmul.default, aten.bmm.default, aten.mm.default}


def _convert(graph: Graph, value: fx.Node, dtype: torch.dtype, before: fx.Node, widened: dict[fx.Node, fx.Node]) -> fx.Node:
    if is_constant(value):
        return graph.add_constant(graph.constant(value).detach().to(dtype), f"{value.name}_{str(dtype)[6:]}", before=before)
    if value in widened:
        return widened[value]  # half → float → half: exact, so skip the round trip
    with graph.module.graph.inserting_before(before):
        return graph.module.graph.call_function(aten.to.dtype, (value, dtype))


def _eligible(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in WEIGHTED | PRODUCTS:
        return False
    operands = [a for a in node.args[:3] if isinstance(a, fx.Node)]
    return all(a.meta["val"].dtype == torch.float32 for a in operands) and (node.target in PRODUCTS or is_constant(node.args[1]))


@register_pass("half_precision", "Mixed precision: conv/linear/matmul in float16 or bfloat16, sensitive ops kept in float32", stage="quantize")
def half_precision(graph: Graph, dtype: str = "float16", keep_float: tuple[str, ...] = ()) -> Outcome:
    if dtype not in DTYPES:
        raise PassError(f"half_precision: dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    half = DTYPES[dtype]
    g = graph.module.graph
    changed = [n for n in g.nodes if _eligible(n) and n.name not in keep_float]
    widened_from: dict[fx.Node, fx.Node] = {}  # a float32 cast → the half-precision node it widens
    for node in changed:
        bias = node.args[2] if node.target in WEIGHTED and len(node.args) > 2 else None
        args = [_convert(graph, a, half, node, widened_from) if i < 2 else a for i, a in enumerate(node.args)]
        if bias is not None:
            args[2] = None
        with g.inserting_after(node):
            widened = g.call_function(aten.to.dtype, (node, torch.float32))
        node.replace_all_uses_with(widened, delete_user_cb=lambda user: user is not widened)
        node.args = tuple(args)
        if bias is None:
            widened_from[widened] = node
        if bias is not None:
            # (1, C, 1, 1) for a batched convolution, the rank of its output: TVM's ConvertLayout
            # stops at a lower-rank bias and leaves every such layer between two transposes
            shape = (-1,) if node.target != aten.conv2d.default else (1, -1, 1, 1)[4 - node.meta["val"].dim():]
            with g.inserting_after(widened):
                biased = g.call_function(aten.add.Tensor, (widened, graph.add_constant(graph.constant(bias).reshape(shape), f"{bias.name}_fp32", before=widened)))
            widened.replace_all_uses_with(biased, delete_user_cb=lambda user: user is not biased)
    return Outcome(len(changed), f"{len(changed)} layers in {dtype}, the rest float32")
