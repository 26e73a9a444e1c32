"""The instruments of the pass loop (kiln/passes/loop.py): progress, IR dumps, the outputs' drift
and the check of value-preserving passes, timing. Each sees every step, Kiln's and the backend's
alike; a step whose IR an instrument cannot read (a TVM IRModule cannot run on the example inputs)
is left alone by it."""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Sequence

import torch

from kiln.errors import PassError
from kiln.ir.graph import Graph
from kiln.passes.loop import Instrument, Step
from kiln.report.debug_dir import DebugDir
from kiln.report.records import Drift, PassRecord

# How far a value-preserving pass may move the outputs, relative to their scale: float
# reassociation (folding a batch norm into weights) moves them ~1e-7.
PRESERVED_TOLERANCE = 1e-5


class Progress(Instrument):
    """One line per step, before it runs ("pass fold_batch_norm", "tvm FuseOps")."""

    def __init__(self, say: Callable[[str], None] | None) -> None:
        self.say = say

    def run_before_pass(self, step: Step, ir: Any) -> None:
        if self.say is not None:
            self.say(f"{'pass' if step.stage == 'kiln' else step.stage} {step.name}")


class Timing(Instrument):
    """The step's own seconds into its row; last in the list, so it times the step alone."""

    def run_before_pass(self, step: Step, ir: Any) -> None:
        self.start = time.perf_counter()

    def run_after_pass(self, step: Step, before: Any, after: Any, record: PassRecord) -> None:
        record.seconds = time.perf_counter() - self.start


class DumpIR(Instrument):
    """With a debug directory, the IR after every step as a numbered file: a Kiln graph as text
    and as the JSON the HTML report draws, an IR that prints itself as a script (TVM's IRModule)
    as that script."""

    def __init__(self, debug: DebugDir) -> None:
        self.debug = debug

    def run_after_pass(self, step: Step, before: Any, after: Any, record: PassRecord) -> None:
        if not self.debug.enabled:
            return
        if isinstance(after, Graph):
            from kiln.report.graph_view import graph_data

            self.debug.dump(record.index, step.name, after.text())
            self.debug.dump(record.index, step.name, json.dumps(graph_data(after)), suffix=".graph.json")
        elif hasattr(after, "script"):
            self.debug.dump(record.index, f"{step.stage}_{step.name}", after.script(show_meta=False), suffix=".py")


class Outputs(Instrument):
    """Runs what can run on the example `inputs` after each step: a Kiln graph, and an executable
    that runs on this machine. With `reference` (the eager model's flat outputs), each such row
    carries the drift from it; a graph's row carries its statistics. With `verify`, a step that
    promises to preserve values (`Step.preserves_values`) but moves the outputs by more than
    `tolerance` of their scale is a PassError naming it: a broken rewrite is caught where it
    happens. `graph` and `graph_outputs` are the last graph's and its outputs (what the backend's
    build is held to); `executable_outputs` the executable's, where one ran."""

    def __init__(self, inputs: Sequence[torch.Tensor] | None = None, reference: Sequence[torch.Tensor] | None = None,
                 verify: bool = False, tolerance: float = PRESERVED_TOLERANCE) -> None:
        self.inputs, self.reference = inputs, reference
        self.verify, self.tolerance = verify, tolerance
        self.graph: Graph | None = None
        self.graph_outputs: tuple[torch.Tensor, ...] | None = None
        self.executable_outputs: list[torch.Tensor] | None = None

    def run_after_pass(self, step: Step, before: Any, after: Any, record: PassRecord) -> None:
        if isinstance(after, Graph):
            record.stats = after.stats()
            unchanged = after is before and self.graph is before  # the same graph gives the same outputs: no run
            outputs = self.graph_outputs if unchanged else self._graph_outputs(after, step)
            if not unchanged and self.verify and step.preserves_values and self.graph_outputs is not None:
                moved = relative_change(outputs, self.graph_outputs)
                if not moved <= self.tolerance:
                    raise PassError(
                        f"pass '{step.name}' promises to preserve values but moved the outputs by {moved:.2e} of their "
                        f"scale (allowed {self.tolerance:.0e}): a broken rewrite")
            self.graph, self.graph_outputs = after, outputs
        elif self.inputs is not None and getattr(after, "why_not_here", lambda: "no executable")() is None:
            outputs = self.executable_outputs = after(self.inputs)
        else:
            return
        if outputs is not None and self.reference is not None:
            record.drift = Drift.between(outputs, self.reference)

    def _graph_outputs(self, graph: Graph, step: Step) -> tuple[torch.Tensor, ...] | None:
        if self.inputs is None or (self.reference is None and not self.verify):
            return None
        try:
            return graph.run(*self.inputs)
        except Exception as error:  # the graph a pass left cannot run: that pass broke it
            where = "capture" if step.name == "input" else f"pass '{step.name}'"
            raise PassError(f"the graph after {where} fails on the example inputs: {type(error).__name__}: {error}") from error


def relative_change(outputs: Sequence[torch.Tensor], previous: Sequence[torch.Tensor]) -> float:
    """max |Δ| over the elements that changed, relative to the largest finite |previous| value:
    identical infinities and NaNs (a max over an empty set, a saturating cast) are no change; a
    changed shape, or an infinity or NaN that moved, is an infinite one."""
    if len(outputs) != len(previous):
        return math.inf
    worst, scale = 0.0, 0.0
    for a, b in zip(outputs, previous):
        if a.shape != b.shape or a.dtype != b.dtype:
            return math.inf
        a, b = a.detach().double(), b.detach().double()
        changed = ~((a == b) | (a.isnan() & b.isnan()))
        if changed.any():
            difference = (a[changed] - b[changed]).abs()
            worst = max(worst, math.inf if not difference.isfinite().all() else difference.max().item())
        finite = b[b.isfinite()]
        scale = max(scale, finite.abs().max().item() if finite.numel() else 0.0)
    return worst / scale if scale else (0.0 if worst == 0 else math.inf)


def standard_instruments(progress: Callable[[str], None] | None, debug: DebugDir,
                         outputs: Outputs | None = None) -> list[Instrument]:
    """Progress, IR dumps, outputs (where given), timing innermost: what every loop runs with."""
    return [Progress(progress), DumpIR(debug), *([outputs] if outputs is not None else []), Timing()]
