"""PyTorch → Kiln IR, through `torch.export`."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.fx as fx

from kiln.errors import FrontendError, KilnError
from kiln.ir.graph import Graph

BATCH = "batch"


def from_torch(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    example_kwargs: dict[str, Any] | None = None,
    dynamic_batch: bool = False,
) -> Graph:
    """Capture `model` in inference mode. With `dynamic_batch`, dim 0 of every tensor input is one
    symbolic size named "batch", so the compiled module accepts any batch."""
    model = model.eval()
    args = tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    dynamic_shapes = None
    if dynamic_batch:
        # export specializes a size-1 dim to a constant: trace with batch 2 instead
        args, kwargs = torch.utils._pytree.tree_map(_batch_of_two, (args, kwargs))
        batch = torch.export.Dim(BATCH)
        named = inspect.signature(model.forward).bind(*args, **kwargs).arguments
        dynamic_shapes = torch.utils._pytree.tree_map(
            lambda x: {0: batch} if isinstance(x, torch.Tensor) else None, dict(named)
        )
    try:
        with torch.no_grad():
            exported = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes)
    except KilnError:
        raise  # already names the problem (an unsupported ONNX op, say)
    except Exception as error:
        raise FrontendError(f"torch.export could not capture {type(model).__name__}: {error}") from error
    return from_exported_program(exported, {BATCH: BATCH} if dynamic_batch else None)


def from_exported_program(exported: torch.export.ExportedProgram, names: dict[str, str] | None = None) -> Graph:
    """Turn an ExportedProgram into a Graph with flat inputs/outputs and weights as attributes.

    `names` maps the user's dimension names to themselves; export's symbols for them (s77...) are
    resolved through the program's range constraints.
    """
    module = exported.module()
    # Unlifting adds a guard-checking call and pytree calling convention; Kiln validates inputs
    # itself and keeps the user's nesting in specs instead.
    for node in list(module.graph.nodes):
        if node.op == "call_module":
            module.graph.erase_node(node)
    module.graph._codegen = fx.graph.CodeGen()
    module.delete_all_unused_submodules()
    module.recompile()
    graph = Graph(module, exported.call_spec.in_spec, exported.call_spec.out_spec)
    graph.symbol_names = _symbol_names(graph, names or {})
    return graph


def _symbol_names(graph: Graph, names: dict[str, str]) -> dict[str, str]:
    """Name export's symbols: a symbol on dim 0 of an input is the batch when one was asked for."""
    mapping: dict[str, str] = {}
    for spec in graph.inputs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                mapping[dim] = BATCH if axis == 0 and BATCH in names else dim
    return mapping


def _batch_of_two(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 1:
        return value.expand(2, *value.shape[1:]).clone()
    return value
