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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from isolated import report as report_case, run_cases  # noqa: E402

from kiln.testing.graph_fuzz import classify, programs  # noqa: E402


def cpu_name() -> str:
    """The CPU a figure comes from: lscpu's model name, family and model, and LLVM's name for it
    ("AMD EPYC (family 26, model 2; LLVM znver5)"): a virtual machine's model name alone hides
    which generation it is."""
    fields = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("Model name") or platform.processor() or "unknown CPU"
    try:
        from kiln.backends import resolve_target

        llvm = resolve_target("llvm").tvm_target.get("mcpu", "")
    except Exception:  # noqa: BLE001 - the name without LLVM's
        llvm = ""
    details = [f"family {fields['CPU family']}, model {fields['Model']}" if "CPU family" in fields else "",
               f"LLVM {llvm}" if llvm else ""]
    details = [detail for detail in details if detail]
    return f"{name} ({'; '.join(details)})" if details else name


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
            lines += [f"### {outcome.kind}: {outcome.detail}", "", "```", str(outcome.case), "```", ""]
    return "\n".join(lines)


def api_worker(first: int, end: int, seed_value: int) -> None:
    """Sessions first..end-1 (hypothesis seeded by the first): one reported line each."""
    import json

    from kiln.testing.api_fuzz import run_session, sessions

    index = first

    def trial(session):
        nonlocal index
        if index >= end:
            return
        run_session(session)
        report_case(index, json.dumps([[o.kind, o.detail] for o in session.outcomes]), str(session).replace("\n", " | "))
        index += 1

    while index < end:  # hypothesis may stop short of max_examples: draw again from where it stopped
        seed(seed_value + index)(settings(max_examples=end - index, deadline=None, database=None,
                                          suppress_health_check=list(HealthCheck))(given(sessions())(trial)))()


def api_report(finished: dict, cases: int, seed_value: int, seconds: float, jobs: int) -> str:
    import json

    calls: collections.Counter = collections.Counter()
    problems, dead = [], 0
    for index in range(cases):
        fields = finished.get(index)
        if fields is None:
            dead += 1
            problems.append(("dead process", "the session ended its worker process", f"session {index}"))
            continue
        outcomes, session = json.loads(fields[0]), fields[1] if len(fields) > 1 else ""
        for kind, detail in outcomes:
            calls[kind] += 1
            if kind not in ("matched", "refused"):
                problems.append((kind, detail, session))
    lines = [
        "# API fuzzing: random sessions of kiln.compile and calls, against eager PyTorch",
        "",
        f"`python benchmarks/fuzz.py --api --cases {cases} --seed {seed_value}` on {cpu_name()}, {jobs} worker processes, "
        f"{seconds:.0f} s. Each case is a session (kiln/testing/api_fuzz.py): 1-4 compiles of models from seven families "
        "(a plain tensor attribute, convolution, token ids, an index input, an input written in place, baked keyword "
        "arguments, Python-value outputs) into one shared compile cache, for llvm, eager or onnxruntime, each called with "
        "valid and hostile inputs (another batch, indices past either end, NaN, infinities, non-contiguous, channels-last, "
        "numpy, wrong dtype, shape or count).",
        "",
        "| sessions | dead processes | calls | matched | refused with a KilnError | wrong | other exceptions |",
        "|---|---|---|---|---|---|---|",
        f"| {cases} | {dead} | {sum(calls.values())} | {calls['matched']} | {calls['refused']} | {calls['wrong']} | "
        f"{calls['crashed']} |",
        "",
    ]
    if problems:
        lines += ["## Problems", ""] + [f"- {kind}: {detail}  \n  session: {session}" for kind, detail, session in problems]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=1000)
    parser.add_argument("--api", action="store_true", help="fuzz the whole API (sessions) instead of random graphs")
    parser.add_argument("--cases", type=int, default=1000, help="--api: how many sessions")
    parser.add_argument("--jobs", type=int, default=None, help="--api: worker processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        api_worker(*args.worker, args.seed)
        return
    start = time.perf_counter()
    if args.api:
        import os

        jobs = args.jobs or os.cpu_count() or 1
        finished = run_cases(args.cases, lambda first, end: ["--worker", str(first), str(end), "--seed", str(args.seed)], jobs,
                             lambda done: f"{len(done)} sessions")
        text = api_report(finished, args.cases, args.seed, time.perf_counter() - start, jobs)
        Path(args.out or Path(__file__).parent / "results" / "fuzz_api.md").write_text(text + "\n")
        print(text.split("## Problems")[0])
        return
    outcomes = run(args.graphs, args.seed)
    text = report(outcomes, args.seed, time.perf_counter() - start)
    Path(args.out or Path(__file__).parent / "results" / "fuzz.md").write_text(text + "\n")
    print(text.split("## Graphs")[0])


if __name__ == "__main__":
    main()
