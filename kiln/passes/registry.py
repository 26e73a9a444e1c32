"""The pass registry: every graph transform registers itself here by name.

A pass is a function `rewrite(graph, **options) -> int | Outcome` that edits the private copy of
the graph it is handed and returns how many rewrites it made (an `Outcome` adds a line for the
report and one line per layer it changed: the rank chosen, the error made). `Pass.__call__` supplies the copy and the
clean-up, so from the outside every pass is pure: Graph in, new Graph and a record out.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from kiln.errors import PassError
from kiln.ir.graph import Graph

@dataclass(frozen=True)
class Outcome:
    changes: int  # rewrites made; 0 means the graph is unchanged
    note: str = ""  # one line for the report table
    layers: dict[str, str] = field(default_factory=dict)  # layer (node name) -> what happened to it


Rewrite = Callable[..., "int | Outcome"]


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    changes: int
    note: str = ""
    layers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pass:
    name: str
    description: str
    rewrite: Rewrite
    options: dict[str, Any] = field(default_factory=dict)
    # the pass promises the same outputs (up to float rounding): the manager can check it
    preserves_values: bool = False
    # where in a pipeline it belongs (STAGES); the manager checks the order (kiln/passes/manager.py)
    stage: str = "optimize"

    def __call__(self, graph: Graph, **options: Any) -> PassResult:
        unknown = set(options) - set(self.options)
        if unknown:
            raise PassError(f"pass '{self.name}' has no option(s) {sorted(unknown)}; it takes {sorted(self.options)}")
        work = graph.copy()
        outcome = self.rewrite(work, **{**self.options, **options})
        if not isinstance(outcome, Outcome):
            outcome = Outcome(outcome)
        if not outcome.changes:  # the copy is as it was: no shape propagation, the graph handed in stays
            return PassResult(graph, 0, outcome.note, dict(outcome.layers))
        return PassResult(work.finalize(), outcome.changes, outcome.note, dict(outcome.layers))


PASSES: dict[str, Pass] = {}


# A pipeline's passes run in this order of stages: compression first (pruning ranks channels by
# the batch norms folding removes), the graph optimizations, quantization last (it calibrates the
# graph that runs); a clean-up ("anywhere") may follow any of them.
STAGES = ("compress", "optimize", "quantize")


def register_pass(name: str, description: str, preserves_values: bool = False,
                  stage: str = "optimize") -> Callable[[Rewrite], Pass]:
    """Decorator: the keyword arguments of the rewrite function (with defaults) are its options.
    `preserves_values` is the pass's contract that its rewrite changes no output beyond float
    rounding (clean-up, folding); with verification on, the manager holds it to that. `stage` is
    one of STAGES, or "anywhere" for a clean-up."""

    def decorate(rewrite: Rewrite) -> Pass:
        if name in PASSES:
            raise PassError(f"a pass named '{name}' is already registered")
        parameters = list(inspect.signature(rewrite).parameters.values())[1:]
        if stage not in (*STAGES, "anywhere"):
            raise PassError(f"pass '{name}': stage '{stage}' is none of {', '.join(STAGES)}, anywhere")
        registered = Pass(name, description, rewrite, {p.name: p.default for p in parameters}, preserves_values, stage)
        PASSES[name] = registered
        return registered

    return decorate


def get_pass(name: str) -> Pass:
    try:
        return PASSES[name]
    except KeyError:
        raise PassError(f"unknown pass '{name}'; registered passes: {', '.join(sorted(PASSES))}") from None
