"""Run one pass on a tiny model and check what it did."""

from __future__ import annotations

import torch

from kiln.ir import Graph, from_torch
from kiln.ir.stats import op_name
from kiln.passes import PassResult, get_pass
from tests.conftest import assert_matches, eager


def run_pass(name: str, model: torch.nn.Module, *inputs: torch.Tensor, **options) -> tuple[Graph, PassResult]:
    """Capture `model`, run pass `name`, and check the result still computes what eager does."""
    graph = from_torch(model, inputs)
    result = get_pass(name)(graph, **options)
    assert_matches(result.graph.run(*inputs), tuple(_flat(eager(model, *inputs))))
    return graph, result


def _flat(value):
    return value if isinstance(value, tuple) else (value,)


def ops(graph: Graph) -> list[str]:
    return [op_name(n) for n in graph.nodes if n.op == "call_function"]
