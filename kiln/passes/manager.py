"""The pass manager: runs a pipeline and owns all instrumentation (timing, statistics, numeric
drift against the eager model, IR dumps), so no pass carries any of it."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from kiln.errors import KilnError, PassError
from kiln.ir.graph import Graph
from kiln.passes.instrument import DebugDir, Drift, PassRecord, Report
from kiln.passes.registry import PassResult, get_pass

Progress = Callable[[str], None]


class PassManager:
    """Runs `pipeline` (a list of (pass name, options)) on a Graph.

    With `reference` (the eager model's flat outputs on `inputs`), every row of the report carries
    the drift of the graph after that pass.
    """

    def __init__(
        self,
        pipeline: Sequence[tuple[str, dict[str, Any]]],
        *,
        inputs: Sequence[torch.Tensor] | None = None,
        reference: Sequence[torch.Tensor] | None = None,
        debug: DebugDir | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.pipeline = list(pipeline)
        self.inputs, self.reference = inputs, reference
        self.debug = debug or DebugDir(None)
        self.progress = progress

    def drift(self, graph: Graph) -> Drift | None:
        if self.reference is None or self.inputs is None:
            return None
        return Drift.between(graph.run(*self.inputs), self.reference)

    def run(self, graph: Graph, report: Report | None = None) -> tuple[Graph, Report]:
        report = report if report is not None else Report()
        if not report.rows:
            self._record(report, "input", graph, 0.0, None)
        for name, options in self.pipeline:
            if self.progress:
                self.progress(f"pass {name}")
            start = time.perf_counter()
            try:
                result = get_pass(name)(graph, **options)
            except KilnError:
                raise
            except Exception as error:
                raise PassError(f"pass '{name}' failed: {type(error).__name__}: {error}") from error
            graph = result.graph
            self._record(report, name, graph, time.perf_counter() - start, result)
        return graph, report

    def _record(self, report: Report, name: str, graph: Graph, seconds: float, result: PassResult | None) -> None:
        record = report.add(PassRecord(
            report.next_index(), name, "kiln", seconds, result and result.changes, graph.stats(), self.drift(graph),
            note=result.note if result else "", layers=result.layers if result else {},
        ))
        self.debug.dump(record.index, name, graph.text())
