"""A Kiln graph as the HTML report draws it: one box per node (inputs, ops, the output), weights
folded into the box of the op that reads them, boxes grouped by the model's top-level module.

`graph_data` is what the debug directory keeps for every pass (`NNN_pass.graph.json`);
`draw_svg` lays it out with Graphviz's `dot` (Debian's `graphviz`), which Kiln does not
reimplement; `diff` says which boxes a pass removed, added or changed.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import torch.fx as fx

from kiln.errors import KilnError
from kiln.ir.printer import node_type
from kiln.ir.stats import op_name


def graph_data(graph) -> dict[str, Any]:
    """The nodes of `graph` (a Kiln Graph): id, op, type, the ids it reads, its weights, its module."""
    weights = {node.name: node for node in graph.module.graph.nodes if node.op == "get_attr"}
    nodes = []
    for node in graph.module.graph.nodes:
        if node.op == "get_attr":
            continue
        sources = [a for a in node.all_input_nodes]
        nodes.append({
            "id": node.name,
            "op": {"placeholder": "input", "output": "output"}.get(node.op) or op_name(node),
            "type": node_type(graph, node) if node.op != "output" else "",
            "inputs": [a.name for a in sources if a.name not in weights],
            "weights": [f"{a.target}: {node_type(graph, a)}" for a in sources if a.name in weights],
            "module": _module(node),
        })
    return {"nodes": nodes}


def _module(node: fx.Node) -> str:
    """The block a node came from: its module path up to the first index of a repeated block
    ("encoder.layer.3", "layers.1"), else the top-level module ("head"); "" where torch.export
    kept none."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [str(path).replace("L['self'].", "") for path, _ in stack.values() if path]
    if not paths:
        return ""
    parts = paths[-1].split(".")
    for end, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:end + 1])
    return parts[0]


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    """Box ids a pass removed (in `before` only), added (in `after` only) and changed (in both, with
    another op, type, inputs or weights)."""
    old = {node["id"]: node for node in before["nodes"]}
    new = {node["id"]: node for node in after["nodes"]}
    keys = ("op", "type", "inputs", "weights")
    return {
        "removed": [name for name in old if name not in new],
        "added": [name for name in new if name not in old],
        "changed": [name for name in new if name in old and any(old[name][k] != new[name][k] for k in keys)],
    }


DOT_TIMEOUT_S = 120


def draw_svg(data: dict[str, Any]) -> str:
    """The graph laid out by Graphviz as SVG: each box a `<g class="node" id="node-ID">`."""
    dot = shutil.which("dot")
    if dot is None:
        raise KilnError("drawing graphs needs Graphviz's `dot`: apt-get install graphviz")
    result = subprocess.run([dot, "-Tsvg"], input=to_dot(data), capture_output=True, text=True, timeout=DOT_TIMEOUT_S)
    if result.returncode != 0:
        raise KilnError(f"Graphviz could not lay out the graph: {result.stderr.strip()[:500]}")
    return result.stdout[result.stdout.index("<svg"):]


def to_dot(data: dict[str, Any]) -> str:
    lines = ['digraph kiln {', '  rankdir=TB; nodesep=0.25; ranksep=0.35;',
             '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10];',
             '  edge [color="#888888", arrowsize=0.6];']
    by_module: dict[str, list[dict[str, Any]]] = {}
    for node in data["nodes"]:
        by_module.setdefault(node["module"], []).append(node)
    for index, (module, nodes) in enumerate(by_module.items()):
        indent = "  "
        if module:
            lines.append(f'  subgraph cluster_{index} {{ label="{_escape(module)}"; style="rounded"; color="#cccccc"; fontname="Helvetica";')
            indent = "    "
        for node in nodes:
            label = "\n".join([node["op"], node["type"], *(f"w {w}" for w in node["weights"])])
            kind = "input" if node["op"] == "input" else "output" if node["op"] == "output" else "op"
            lines.append(f'{indent}"{_escape(node["id"])}" [id="node-{_escape(node["id"])}", class="kiln-{kind}", '
                         f'tooltip="{_escape(node["id"])}", label="{_escape(label)}"];')
        if module:
            lines.append("  }")
    for node in data["nodes"]:
        for source in node["inputs"]:
            lines.append(f'  "{_escape(source)}" -> "{_escape(node["id"])}";')
    lines.append("}")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def kernel_graph_data(mod) -> dict[str, Any]:
    """The fused TVM kernels of a scheduled Relax module as boxes: one per `call_tir` of `main`
    (the kernel's name, its output), its weights (constants) folded in, the other bindings
    (tuples, views the VM makes itself) as boxes of their own, edges by data flow."""
    from tvm import relax

    main = mod["main"]
    ids: dict[Any, str] = {}

    def identify(var) -> str:  # Relax names repeat ("lv" twice): a box id per variable
        name, count = _name(var), 1
        while name in ids.values():
            count += 1
            name = f"{_name(var)}_{count}"
        ids[var] = name
        return name

    nodes = [{"id": identify(p), "op": "input", "type": _relax_type(p), "inputs": [], "weights": [], "module": ""}
             for p in main.params]
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            arguments = list(value.args[1].fields) if _is_call_tir(value) else _operands(value)
            nodes.append({
                "op": value.args[0].name_hint if _is_call_tir(value) else _relax_op(value),
                "type": _relax_type(binding.var),
                "inputs": [ids[a] for a in arguments if isinstance(a, relax.Var) and a in ids],
                "weights": [f"constant: {_relax_type(a)}" for a in arguments if not isinstance(a, relax.Var)],
                "module": "TVM kernels" if _is_call_tir(value) else "",
                "id": identify(binding.var),
            })
    nodes.append({"id": "output", "op": "output", "type": "", "module": "", "weights": [],
                  "inputs": [ids[a] for a in _operands(main.body.body) if isinstance(a, relax.Var) and a in ids]})
    return {"nodes": nodes}


def _name(var) -> str:
    return str(getattr(var, "name_hint", None) or var.name)


def _is_call_tir(value) -> bool:
    from tvm import relax

    return isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir"


def _operands(value) -> list:
    from tvm import relax

    if isinstance(value, relax.Tuple):
        return list(value.fields)
    if isinstance(value, relax.Call):
        return list(value.args)
    if isinstance(value, relax.TupleGetItem):
        return [value.tuple_value]
    return [value] if isinstance(value, relax.Var) else []


def _relax_op(value) -> str:
    from tvm import relax

    if isinstance(value, relax.Call):
        return getattr(value.op, "name", None) or getattr(value.op, "name_hint", "call")
    return type(value).__name__.lower()


def _relax_type(expr) -> str:
    info = getattr(expr, "ty", None)
    shape, dtype = getattr(info, "shape", None), getattr(info, "dtype", None)
    if shape is not None and dtype is not None and hasattr(shape, "values"):
        return f"{dtype}[{', '.join(str(d.value) if hasattr(d, 'value') else str(d) for d in shape.values)}]"
    return str(type(info).__name__) if info is not None else ""


COLLAPSE_ABOVE = 80  # boxes: a larger graph is also drawn with each block as one box


def collapse(data: dict[str, Any]) -> dict[str, Any]:
    """The graph with each block (a module group) as one box, named by the block and counting its
    ops; nodes outside any block stay as they are. What keeps a 12-layer encoder readable."""
    block_of = {node["id"]: f"block {node['module']}" if node["module"] else node["id"] for node in data["nodes"]}
    boxes: dict[str, dict[str, Any]] = {}
    for node in data["nodes"]:
        box_id = block_of[node["id"]]
        if box_id not in boxes:
            grouped = box_id != node["id"]
            boxes[box_id] = {"id": box_id, "op": node["module"] if grouped else node["op"], "type": "" if grouped else node["type"],
                             "inputs": [], "weights": [], "module": "", "count": 0}
        box = boxes[box_id]
        box["count"] += 1
        for source in node["inputs"]:
            if block_of.get(source, source) != box_id and block_of.get(source, source) not in box["inputs"]:
                box["inputs"].append(block_of.get(source, source))
    for box in boxes.values():
        if box["id"].startswith("block "):
            box["type"] = f"{box['count']} node{'s' if box['count'] != 1 else ''}"
        del box["count"]
    return {"nodes": list(boxes.values())}
