"""The pass manager: a pipeline of graph passes as steps of the one pass loop
(kiln/passes/loop.py), whose instruments (kiln/passes/instruments.py) own all instrumentation:
timing, statistics, numeric drift against the eager model, IR dumps. No pass carries any of it."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from kiln.ir.graph import Graph
from kiln.passes.instruments import PRESERVED_TOLERANCE, Outputs, standard_instruments
from kiln.passes.loop import Step, StepOutcome, run_steps
from kiln.passes.pipelines import check_order
from kiln.passes.registry import STAGES, get_pass
from kiln.report.debug_dir import DebugDir
from kiln.report.records import Report

Progress = Callable[[str], None]


def graph_step(name: str, options: dict[str, Any]) -> Step:
    """The registered pass `name` with `options`, as a step of the loop."""
    registered = get_pass(name)

    def run(graph: Graph) -> StepOutcome:
        result = registered(graph, **options)
        return StepOutcome(result.graph, result.changes, result.note, result.layers)

    return Step(name, "kiln", run, registered.preserves_values)


def input_step() -> Step:
    """The captured graph's row: a step that changes nothing, so the instruments record what the
    passes start from (its statistics, its drift from eager, its IR)."""
    return Step("input", "kiln", StepOutcome)


def graph_steps(pipeline: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, list[Step]]:
    """The checked pipeline's passes as steps, by stage (compress, optimize, quantize): a clean-up
    registered to run anywhere belongs to the stage of the pass before it."""
    check_order(pipeline)
    stages: dict[str, list[Step]] = {stage: [] for stage in STAGES}
    current = "compress"
    for name, options in pipeline:
        current = current if get_pass(name).stage == "anywhere" else get_pass(name).stage
        stages[current].append(graph_step(name, options))
    return stages


class PassManager:
    """Runs `pipeline` (a list of (pass name, options)) on a Graph through the pass loop.

    With `reference` (the eager model's flat outputs on `inputs`), every row of the report carries
    the drift of the graph after that pass. With `verify`, a pass registered as value-preserving
    whose outputs move from the previous graph's by more than `tolerance` of their scale is a
    PassError naming it. `last_outputs` are the final graph's outputs on `inputs`.
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
        self.steps = [step for stage in graph_steps(pipeline).values() for step in stage]
        self.outputs = Outputs(inputs, reference, verify, tolerance)
        self.instruments = standard_instruments(progress, debug or DebugDir(None), self.outputs)
        self.last_outputs: tuple[torch.Tensor, ...] | None = None

    def run(self, graph: Graph, report: Report | None = None) -> tuple[Graph, Report]:
        report = report if report is not None else Report()
        steps = self.steps if report.rows else [input_step(), *self.steps]
        graph = run_steps(graph, steps, report, self.instruments)
        self.last_outputs = self.outputs.graph_outputs
        return graph, report
