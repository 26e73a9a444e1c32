"""The IR's text form: one line per node, with shapes and dtypes, as a person reads a listing."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from kiln.ir.stats import op_name


def node_type(graph, node: fx.Node) -> str:
    value = node.meta.get("val")
    if value is None or not hasattr(value, "shape"):
        return "?"
    return graph._spec(node.name, value).describe().split(": ", 1)[1]


def _arg(value: Any) -> str:
    if isinstance(value, fx.Node):
        return f"%{value.name}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_arg(v) for v in value)
        return f"[{inner}]"
    return repr(value)


def format_graph(graph) -> str:
    lines = [f"graph({', '.join('%' + s.describe() for s in graph.inputs)}) {{"]
    for node in graph.module.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "get_attr":
            lines.append(f"  %{node.name}: {node_type(graph, node)} = weight {node.target}")
        elif node.op == "call_function":
            args = [_arg(a) for a in node.args] + [f"{k}={_arg(v)}" for k, v in node.kwargs.items()]
            lines.append(f"  %{node.name}: {node_type(graph, node)} = {op_name(node)}({', '.join(args)})")
        elif node.op == "output":
            lines.append(f"  return {_arg(node.args[0])}")
        else:
            lines.append(f"  %{node.name} = {node.op} {node.target}")
    lines.append("}")
    return "\n".join(lines)
