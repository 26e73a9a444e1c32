"""The eager backend: the optimized graph executed by PyTorch. The reference for debugging."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from kiln.backends.base import BackendSteps, BuildContext
from kiln.backends.targets import ResolvedTarget
from kiln.ir.graph import Graph
from kiln.ir.serialize import load_graph, save_graph
from kiln.passes.loop import Step, StepOutcome
from kiln.timing import median_seconds

GRAPH_FILE = "graph.kilnir"


class EagerExecutable:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.graph.run(*inputs))

    def save(self, folder: Path) -> None:
        save_graph(self.graph, folder / GRAPH_FILE)

    def median_seconds(self, inputs: Sequence[torch.Tensor], repeat: int) -> float:
        return median_seconds(lambda: self(inputs), repeat)


class EagerBackend:
    name = "eager"

    def steps(self, context: BuildContext) -> BackendSteps:
        return BackendSteps([], [], [], [Step("build", self.name, lambda graph: StepOutcome(EagerExecutable(graph)))])

    def identity(self, target: ResolvedTarget, tuning_dir: Path | None) -> dict[str, Any]:
        return {"target": target.name}

    def locate_disagreement(self, executable: EagerExecutable, graph: Graph, inputs: Sequence[torch.Tensor],
                            tolerance: float) -> str:
        return "The eager backend runs the graph itself: PyTorch computed other numbers on a second run."

    def load(self, folder: Path, target: ResolvedTarget, threads: int | None,
             mapped: dict[str, Any] | None = None) -> EagerExecutable:
        return EagerExecutable(load_graph(folder / GRAPH_FILE))
