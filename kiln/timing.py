"""Latency measurement shared by `kiln demo` and `benchmarks/`: interleaved runs, medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable

from kiln import background


def interleaved_medians(
    runs: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2, calls_per_turn: int = 3
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so that drift in machine
    load (turbo, other processes) hits every contender alike.

    Each turn makes `calls_per_turn` calls and times all but the first: runtimes keep their worker
    threads spinning for a while after a call (TVM, OpenMP, ONNX Runtime all do), and the untimed
    call absorbs the previous contender's spinning instead of charging it to this one. Compile
    cache entries this process is still writing (a background thread, seconds for a large
    model) are finished first: they would take a core from every contender.
    """
    background.wait_all()
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run()
            for _ in range(calls_per_turn - 1):
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def median_seconds(run: Callable[[], object], repeats: int = 10) -> float:
    """Median seconds per call of one function (the interleaved protocol with one contender)."""
    return interleaved_medians({"run": run}, repeats=repeats)["run"]
