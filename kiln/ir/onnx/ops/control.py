"""Control flow: If, where its condition is known at import time."""

from __future__ import annotations



from kiln.errors import FrontendError
from kiln.ir.onnx.ops.registry import NodeContext, converts


@converts("If")
def _if(c: NodeContext):
    """Reached only when the condition is computed from data: Kiln inlines the branch of a
    condition known at import time, and compiles no data-dependent control flow."""
    c.constant(0)
    raise FrontendError(f"ONNX If node '{c.node.name or c.node.output[0]}': a branch chosen at run time is not supported")
