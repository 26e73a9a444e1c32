"""An op no lowering took, named before code generation: what reached TVM's VM code generator as
a Relax operator (topk, sort on the CPU) failed there as "CodeGenVM cannot emit this Relax
operator directly", naming neither the op's Kiln node nor the model line it came from."""

from __future__ import annotations

import tvm
from tvm import relax

from kiln.backends.tvm.provenance import kiln_names, var_name
from kiln.errors import UnsupportedOpError
from kiln.ir.graph import Graph
from kiln.ir.source import model_source

# what `main` may call once Kiln's passes ran: kernels, and the VM's own calls
LOWERED = {"relax.call_tir", "relax.call_dps_packed", "relax.call_pure_packed", "relax.null_value"}


def refuse_unlowered(mod: tvm.IRModule, graph: Graph) -> None:
    """An UnsupportedOpError for the first call in `main` of an op no lowering replaced by a
    kernel, with the Kiln node its binding is named after and that node's model line."""
    nodes = {node.name: node for node in graph.nodes}
    function = mod["main"]
    for block in getattr(function.body, "blocks", []):
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name not in LOWERED:
                found = kiln_names([var_name(binding.var)], set(nodes))
                node = nodes[found[0]] if found else None
                raise UnsupportedOpError(
                    f"{value.op.name} (no lowering made it a kernel)", node.name if node is not None else var_name(binding.var),
                    model_source(node) if node is not None else "", "the TVM backend")
