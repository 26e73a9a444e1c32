"""The pass manager: runs a pipeline and owns all instrumentation (timing, statistics, numeric
drift against the eager model, IR dumps), so no pass carries any of it."""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Sequence

import torch

from kiln.errors import KilnError, PassError
from kiln.ir.graph import Graph
from kiln.passes.pipelines import check_order
from kiln.passes.registry import PassResult, get_pass
from kiln.report.debug_dir import DebugDir
from kiln.report.records import Drift, PassRecord, Report

Progress = Callable[[str], None]

# How far a value-preserving pass may move the outputs, relative to their scale: float
# reassociation (folding a batch norm into weights) moves them ~1e-7.
PRESERVED_TOLERANCE = 1e-5


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


class PassManager:
    """Runs `pipeline` (a list of (pass name, options)) on a Graph.

    With `reference` (the eager model's flat outputs on `inputs`), every row of the report carries
    the drift of the graph after that pass. With `verify`, a pass registered as value-preserving
    whose outputs move from the previous graph's by more than `tolerance` of their scale is a
    PassError naming it: a broken rewrite is caught where it happens, not as a wrong answer later.
    `last_outputs` are the final graph's outputs on `inputs` (what the backend's build is held to).
    """

    def __init__(
        self,
        pipeline: Sequence[tuple[str, dict[str, Any]]],
        *,
        inputs: Sequence[torch.Tensor] | None = None,
        reference: Sequence[torch.Tensor] | None = None,
        debug: DebugDir | None = None,
        progress: Progress | None = None,
        verify: bool = False,
        tolerance: float = PRESERVED_TOLERANCE,
    ) -> None:
        check_order(pipeline)
        self.pipeline = list(pipeline)
        self.inputs, self.reference = inputs, reference
        self.debug = debug or DebugDir(None)
        self.progress = progress
        self.verify, self.tolerance = verify, tolerance
        self.last_outputs: tuple[torch.Tensor, ...] | None = None

    def outputs(self, graph: Graph, stage: str) -> tuple[torch.Tensor, ...] | None:
        """The graph's outputs on the example inputs, where drift or verification needs them."""
        if self.inputs is None or (self.reference is None and not self.verify):
            return None
        try:
            return graph.run(*self.inputs)
        except Exception as error:  # the graph a pass left cannot run: that pass broke it
            raise PassError(f"the graph after {stage} fails on the example inputs: {type(error).__name__}: {error}") from error

    def run(self, graph: Graph, report: Report | None = None) -> tuple[Graph, Report]:
        report = report if report is not None else Report()
        previous = self.outputs(graph, "capture")
        if not report.rows:
            self._record(report, "input", graph, 0.0, None, previous)
        for name, options in self.pipeline:
            if self.progress:
                self.progress(f"pass {name}")
            start = time.perf_counter()
            try:
                result = get_pass(name)(graph, **options)
            except KilnError as error:
                if isinstance(error, PassError) and f"'{name}'" not in str(error):
                    raise PassError(f"pass '{name}': {error}") from error
                raise
            except Exception as error:
                raise PassError(f"pass '{name}' failed: {type(error).__name__}: {error}") from error
            seconds = time.perf_counter() - start
            unchanged = result.graph is graph  # a pass that changed nothing hands back the graph it got
            graph = result.graph
            # the same graph gives the same outputs: no run (0.15 s per pass of BERT-base)
            outputs = previous if unchanged else self.outputs(graph, f"pass '{name}'")
            if not unchanged and self.verify and get_pass(name).preserves_values and previous is not None:
                moved = relative_change(outputs, previous)
                if not moved <= self.tolerance:
                    raise PassError(
                        f"pass '{name}' promises to preserve values but moved the outputs by {moved:.2e} of their "
                        f"scale (allowed {self.tolerance:.0e}): a broken rewrite")
            previous = outputs
            self._record(report, name, graph, seconds, result, outputs)
        self.last_outputs = previous
        return graph, report

    def _record(self, report: Report, name: str, graph: Graph, seconds: float, result: PassResult | None,
                outputs: Sequence[torch.Tensor] | None) -> None:
        drift = Drift.between(outputs, self.reference) if outputs is not None and self.reference is not None else None
        record = report.add(PassRecord(
            report.next_index(), name, "kiln", seconds, result and result.changes, graph.stats(), drift,
            note=result.note if result else "", layers=result.layers if result else {},
        ))
        self.debug.dump(record.index, name, graph.text())
        if self.debug.enabled:  # what the HTML report draws (kiln/report/)
            from kiln.report.graph_view import graph_data

            self.debug.dump(record.index, name, json.dumps(graph_data(graph)), suffix=".graph.json")
