"""Differential fuzzing of `kiln.compile` (llvm) against eager PyTorch on random graphs.

    python benchmarks/fuzz.py --graphs 1000 [--seed 0] [--out benchmarks/results/fuzz.md]

Each graph is drawn by `kiln.fuzz.programs` (hypothesis), compiled and compared; the report
counts graphs tried / matched / refused by name / Kiln errors / mismatched / crashed and lists
every graph that did not match, as its program text, so each can be fixed or explained.
"""

from __future__ import annotations

import argparse
import collections
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln.testing.graph_fuzz import classify, programs  # noqa: E402


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(graphs: int, seed_value: int) -> list:
    outcomes = []
    start = time.perf_counter()

    @seed(seed_value)
    @settings(max_examples=graphs, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(programs())
    def trial(program):
        outcome = classify(program)
        outcomes.append(outcome)
        if len(outcomes) % 25 == 0:
            counts = collections.Counter(o.kind for o in outcomes)
            print(f"[fuzz] {len(outcomes)} graphs in {time.perf_counter() - start:.0f} s: {dict(counts)}", file=sys.stderr, flush=True)

    trial()
    return outcomes


def report(outcomes: list, seed_value: int, seconds: float) -> str:
    counts = collections.Counter(o.kind for o in outcomes)
    lines = [
        "# Differential fuzzing: kiln.compile (llvm) vs eager PyTorch",
        "",
        f"`python benchmarks/fuzz.py --graphs {len(outcomes)} --seed {seed_value}` on {cpu_name()}, {seconds:.0f} s.",
        "Random well-typed graphs (kiln/testing/graph_fuzz.py: elementwise, broadcasting binaries, linear/matmul, conv2d with",
        "strides/padding/groups, reductions, softmax, layer norm, reshape/permute/cat/slice; float32 and float64),",
        "compared at max |Δ| ≤ 1e-4 (float32) / 1e-9 (float64) of the output's scale.",
        "",
        "| tried | matched | refused by name | Kiln errors | mismatched | crashed |",
        "|---|---|---|---|---|---|",
        f"| {len(outcomes)} | {counts['matched']} | {counts['refused']} | {counts['kiln error']} | {counts['mismatched']} | {counts['crashed']} |",
        "",
    ]
    problems = [o for o in outcomes if o.kind != "matched"]
    if problems:
        lines += ["## Graphs that did not match", ""]
        for outcome in problems:
            lines += [f"### {outcome.kind}: {outcome.detail}", "", "```", str(outcome.program), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    outcomes = run(args.graphs, args.seed)
    text = report(outcomes, args.seed, time.perf_counter() - start)
    Path(args.out).write_text(text + "\n")
    print(text.split("## Graphs")[0])


if __name__ == "__main__":
    main()
