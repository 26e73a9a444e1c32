"""Which kernel broke the numbers: each kernel's output, on the example inputs, against the eager
value of the Kiln node it computes. What `kiln.compile` names when a build disagrees with its graph.

A kernel knows the Kiln nodes it computes (kiln/backends/tvm/provenance.py); its output is the
value of one of them, in the node's layout or, after ConvertLayout, channels-last. The first
kernel, in the order the module runs them, whose output matches none of its nodes' values under
either layout is the culprit. A kernel whose output has the shape of none of its nodes (a packed
or reshaped intermediate) cannot be compared and is passed over; a shared kernel is compared on
its first call, the layer its nodes name.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx
import tvm

from kiln.backends.tvm.runtime.profile import VM_BUILTIN
from kiln.ir.graph import Graph
from kiln.ir.source import where


def first_disagreeing_kernel(executable, graph: Graph, inputs: Sequence[torch.Tensor], tolerance: float) -> str:
    """A sentence naming the first kernel whose output disagrees with its nodes' eager values by
    more than `tolerance` of their scale, with those nodes and the model line; or saying that no
    single kernel could be singled out."""
    values = _node_values(graph, inputs)
    outputs: list[tuple[str, torch.Tensor]] = []
    seen: set[str] = set()

    def instrument(func, symbol, before_run, ret_value, *args):
        if not before_run and not symbol.startswith(VM_BUILTIN) and symbol not in seen and args:
            seen.add(symbol)
            last = args[-1]
            if isinstance(last, tvm.runtime.Tensor):
                outputs.append((symbol, torch.from_dlpack(last).clone()))
        return 0

    executable.instrumented_vm(instrument)(inputs)
    nodes = {node.name: node for node in graph.nodes}
    for symbol, output in outputs:
        sources = executable.kernel_info.get(symbol, {}).get("sources", [])
        verdicts = [_agrees(output, values[name], tolerance) for name in sources if isinstance(values.get(name), torch.Tensor)]
        verdicts = [verdict for verdict in verdicts if verdict is not None]
        if verdicts and not any(agrees for agrees, _ in verdicts):
            error = min(error for _, error in verdicts)
            last = nodes[sources[-1]]
            return (f"The first kernel that disagrees with its nodes' eager values is '{symbol}' (Kiln nodes "
                    f"{', '.join(sources)}; {error:.2e} of their scale){where(last)}\n ")
    return "No single kernel disagrees with its nodes' eager values (the error builds up over several)."


def _node_values(graph: Graph, inputs: Sequence[torch.Tensor]) -> dict[str, object]:
    """Every node's value when the graph runs in PyTorch on `inputs`."""
    values: dict[str, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node):
            result = super().run_node(node)
            values[node.name] = result
            return result

    with torch.no_grad():
        Recorder(graph.module).run(*inputs)
    return values


def _agrees(output: torch.Tensor, value: torch.Tensor, tolerance: float) -> tuple[bool, float] | None:
    """(whether `output` is `value` within `tolerance` of its scale, the smallest relative error)
    over the layouts a kernel may write it in; None where no layout has its shape."""
    layouts = [value]
    if value.dim() == 4:
        layouts.append(value.permute(0, 2, 3, 1))
    errors = []
    for candidate in layouts:
        if tuple(candidate.shape) != tuple(output.shape) or candidate.dtype != output.dtype:
            continue
        a, b = output.double(), candidate.double()
        scale = b.abs().max().item() if b.numel() else 0.0
        difference = (a - b).abs().max().item() if b.numel() else 0.0
        errors.append(difference / scale if scale else difference)
    if not errors:
        return None
    error = min(errors)
    return error <= tolerance, error
