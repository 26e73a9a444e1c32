"""Find the first pass that breaks accuracy, by bisection over pipeline prefixes (opt-bisect style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from kiln.ir.graph import Graph
from kiln.report.records import Drift
from kiln.passes.manager import PassManager


@dataclass(frozen=True)
class BisectResult:
    culprit: str | None  # None: the whole pipeline stays within tolerance
    index: int | None  # position of the culprit in the pipeline
    drift: Drift | None  # drift right after the culprit
    runs: int  # how many prefixes were compiled and compared

    def __str__(self) -> str:
        if self.culprit is None:
            return f"no pass exceeds the tolerance ({self.runs} runs)"
        return f"first bad pass: #{self.index} '{self.culprit}' (max|Δ| {self.drift.max_abs:.3e}, cosine {self.drift.cosine:.6f}; {self.runs} runs)"


def bisect(
    graph: Graph,
    pipeline: Sequence[tuple[str, dict[str, Any]]],
    inputs: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    tolerance: float,
) -> BisectResult:
    """Smallest k such that running pipeline[:k] puts the output's relative drift over `tolerance`.

    Assumes that once a pass breaks the numbers, later passes do not repair them.
    """
    runs = 0

    def drift_after(k: int) -> Drift:
        nonlocal runs
        runs += 1
        result, _ = PassManager(pipeline[:k]).run(graph)
        return Drift.between(result.run(*inputs), reference)

    low, high = 0, len(pipeline)
    final = drift_after(high)
    if not final.exceeds(tolerance):
        return BisectResult(None, None, None, runs)
    bad = {high: final}
    # invariant: prefix `low` is good, prefix `high` is bad
    while high - low > 1:
        middle = (low + high) // 2
        drift = drift_after(middle)
        if drift.exceeds(tolerance):
            high, bad[middle] = middle, drift
        else:
            low = middle
    return BisectResult(pipeline[high - 1][0], high - 1, bad[high], runs)
