"""Where a node came from in the user's model: the frames of its export stack trace that are the
model's own, which every error about a node quotes."""

from __future__ import annotations

import re

import torch.fx as fx

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n(?P<code>[^\n]*)')


def model_source(node: fx.Node) -> str:
    """The model's own frames from a node's export stack trace (library frames dropped)."""
    trace = node.meta.get("stack_trace") or ""
    frames = [m for m in _FRAME.finditer(trace) if "site-packages/torch/" not in m["file"] and "/torch/nn/" not in m["file"]]
    return "\n".join(f'    File "{m["file"]}", line {m["line"]}, in {m["func"]}\n      {m["code"].strip()}' for m in frames[-3:])


def where(node: fx.Node) -> str:
    """"\\n  from the model at:\\n<frames>" for an error message, or "" where none was recorded."""
    source = model_source(node)
    return f"\n  from the model at:\n{source}" if source else ""
