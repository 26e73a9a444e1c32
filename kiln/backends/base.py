"""What every backend provides: the steps that turn a graph into an Executable (`steps(context)`,
run by the pass loop like Kiln's graph passes), and `load(folder)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from kiln.backends.targets import ResolvedTarget
from kiln.ir.graph import Graph
from kiln.passes.instruments import Outputs, standard_instruments
from kiln.passes.loop import Step, run_steps
from kiln.report.records import Report
from kiln.report.debug_dir import DebugDir


class Executable(Protocol):
    """A compiled graph: flat tensors in, flat tensors out."""

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...

    def save(self, folder: Path) -> None:
        """Write everything needed to run again into `folder` (the artifact packs the folder)."""

    def median_seconds(self, inputs: Sequence[torch.Tensor], repeat: int) -> float:
        """Median seconds per call where the code runs."""


@dataclass
class BuildContext:
    """What a backend needs besides the graph; rows it adds go into the compile's report."""

    target: ResolvedTarget
    report: Report = field(default_factory=Report)
    debug: DebugDir = field(default_factory=lambda: DebugDir(None))
    inputs: Sequence[torch.Tensor] | None = None
    reference: Sequence[torch.Tensor] | None = None
    progress: Callable[[str], None] | None = None
    threads: int | None = None  # CPU threads the compiled code runs on; None: all cores
    tuning_dir: Path | None = None  # root of the tuning databases; None: the default location

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


@dataclass
class BackendSteps:
    """A backend's part of the compilation, in the order it runs (kiln/pipeline.py lists it
    beside Kiln's): the graph into the backend's IR, the backend's own passes, scheduling, and
    code generation, whose last step makes the Executable."""

    lowering: list[Step]
    passes: list[Step]
    schedule: list[Step]
    codegen: list[Step]

    def in_order(self) -> list[Step]:
        return [*self.lowering, *self.passes, *self.schedule, *self.codegen]


class Backend(Protocol):
    name: str

    def steps(self, context: BuildContext) -> BackendSteps: ...

    def identity(self, target: ResolvedTarget, tuning_dir: Path | None) -> dict[str, Any]:
        """What a build's code depends on besides the graph and the options: the target as this
        backend reads it (the compile cache's key holds it)."""

    def locate_disagreement(self, executable: Executable, graph: Graph, inputs: Sequence[torch.Tensor], tolerance: float) -> str:
        """A sentence naming where a build that disagrees with `graph` on `inputs` goes wrong."""

    def load(self, folder: Path, target: ResolvedTarget, threads: int | None,
             mapped: dict[str, Any] | None = None) -> Executable: ...


def build(backend: Backend, graph: Graph, context: BuildContext) -> Executable:
    """The backend's steps alone on an optimized graph, through the pass loop with its rows in
    the context's report (what bisection and tuning build with)."""
    instruments = standard_instruments(context.progress, context.debug, Outputs(context.inputs, context.reference))
    return run_steps(graph, backend.steps(context).in_order(), context.report, instruments)
