"""How long compiling takes: cold (a new process, an empty compile cache), warm (a new process,
the cache filled by the cold one), and the same cold compile by an older Kiln checkout for the
"before" figure; then `torch.compile(backend="kiln")` against `kiln.compile` latency, one process,
interleaved medians.

    python benchmarks/compile_time.py [--baseline OLD_CHECKOUT] [--rounds 2] [--threads 2]

Each compile runs in a process of its own and times the `kiln.compile` call alone (imports not
counted); rounds interleave old cold, new cold and new warm. Writes benchmarks/results/compile_time.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz import cpu_name  # noqa: E402

MODELS = ["resnet18", "mobilenet_v2", "bert_base_12l"]

# run in a fresh process under the checkout given by PYTHONPATH: one timed kiln.compile
_COMPILE_ONCE = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(int(sys.argv[2]))
import kiln
from benchmarks.models import benchmark_models
torch.manual_seed(0)
model, inputs = benchmark_models(12)[sys.argv[1]]()
model.eval()
start = time.perf_counter()
if sys.argv[3] == "dynamo":  # the first call compiles: Dynamo's trace, then Kiln (or the cache)
    import kiln.dynamo
    with torch.no_grad():
        torch.compile(model, backend="kiln")(*inputs)
    module = kiln.dynamo.graphs()[0].module
else:
    module = kiln.compile(model, inputs)
seconds = time.perf_counter() - start
rows = sorted(((row.name, row.seconds) for row in module.report.rows), key=lambda row: -row[1])
print(json.dumps({"seconds": seconds, "cached": any(name == "cache" for name, _ in rows), "rows": rows[:6]}))
"""


def compile_in_new_process(checkout: Path, model: str, threads: int, cache_dir: str, cache: bool, mode: str = "kiln") -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "KILN_CACHE_DIR": cache_dir, "KILN_CACHE": "on" if cache else "off",
           "TVM_NUM_THREADS": str(threads)}
    # benchmarks/models.py of this checkout, the compiler of `checkout`
    script = f"import sys; sys.path.append({str(ROOT)!r})\n" + _COMPILE_ONCE
    result = subprocess.run([sys.executable, "-c", script, model, str(threads), mode], env=env, capture_output=True, text=True,
                            cwd=tempfile.gettempdir(), timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"compiling {model} under {checkout} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compile_times(baseline: Path | None, rounds: int, threads: int) -> dict[str, dict[str, list]]:
    times: dict[str, dict[str, list]] = {model: {"before": [], "cold": [], "warm": [], "dynamo cold": [], "dynamo warm": [],
                                                 "rows": []} for model in MODELS}
    for round_index in range(rounds):
        for model in MODELS:
            with tempfile.TemporaryDirectory(prefix="kiln-cache-") as cache_dir:
                if baseline is not None:
                    times[model]["before"].append(compile_in_new_process(baseline, model, threads, cache_dir, False)["seconds"])
                cold = compile_in_new_process(ROOT, model, threads, cache_dir, True)
                warm = compile_in_new_process(ROOT, model, threads, cache_dir, True)
            with tempfile.TemporaryDirectory(prefix="kiln-cache-") as cache_dir:
                dynamo_cold = compile_in_new_process(ROOT, model, threads, cache_dir, True, "dynamo")
                dynamo_warm = compile_in_new_process(ROOT, model, threads, cache_dir, True, "dynamo")
            assert not cold["cached"] and warm["cached"] and not dynamo_cold["cached"] and dynamo_warm["cached"]
            times[model]["dynamo cold"].append(dynamo_cold["seconds"])
            times[model]["dynamo warm"].append(dynamo_warm["seconds"])
            times[model]["cold"].append(cold["seconds"])
            times[model]["warm"].append(warm["seconds"])
            times[model]["rows"] = cold["rows"]
            print(f"[compile] round {round_index + 1} {model}: before {times[model]['before'][-1:]} cold {cold['seconds']:.2f} s, "
                  f"warm {warm['seconds']:.2f} s; torch.compile cold {dynamo_cold['seconds']:.2f} s, warm {dynamo_warm['seconds']:.2f} s",
                  file=sys.stderr, flush=True)
    return times


def dynamo_latency(threads: int, repeats: int) -> list[tuple[str, float, float, float]]:
    """(model, kiln.compile ms, torch.compile(backend="kiln") ms, the same with PyTorch's
    `skip_guard_on_all_nn_modules_unsafe` guard filter), interleaved in this process."""
    import torch

    import kiln
    from benchmarks.models import benchmark_models
    from kiln.timing import interleaved_medians

    torch.set_num_threads(threads)
    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        model, inputs = benchmark_models(12)[name]()
        model.eval()
        direct = kiln.compile(model, inputs, threads=threads, cache=False)
        torch._dynamo.reset()
        options = {"threads": threads, "cache": False}
        # each its own cache entries: in shared ones, the first compile's guards would serve both
        dynamo = torch.compile(model, backend="kiln", isolate_recompiles=True, options=dict(options))
        unguarded = torch.compile(model, backend="kiln", isolate_recompiles=True,
                                  options={**options, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
        with torch.no_grad():
            dynamo(*inputs)
            unguarded(*inputs)
            medians = interleaved_medians({"kiln": lambda: direct(*inputs), "dynamo": lambda: dynamo(*inputs),
                                           "unguarded": lambda: unguarded(*inputs)}, repeats=repeats)
        rows.append((name, medians["kiln"] * 1e3, medians["dynamo"] * 1e3, medians["unguarded"] * 1e3))
        print(f"[latency] {name}: kiln.compile {rows[-1][1]:.2f} ms, torch.compile(backend='kiln') {rows[-1][2]:.2f} ms, "
              f"nn-module guards skipped {rows[-1][3]:.2f} ms", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="a Kiln checkout (git worktree) to time as 'before'")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_time.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    baseline = Path(args.baseline).resolve() if args.baseline else None
    times = compile_times(baseline, args.rounds, args.threads)
    latency = dynamo_latency(args.threads, args.repeats)
    median = lambda values: statistics.median(values) if values else float("nan")  # noqa: E731
    lines = [
        "# Compile time",
        "",
        f"`python benchmarks/compile_time.py --rounds {args.rounds} --threads {args.threads}"
        f"{' --baseline OLD' if baseline else ''}` on {cpu_name()}, {os.cpu_count()} cores. Seconds of the "
        "`kiln.compile` call in a new process (imports not counted), median of the rounds; cold: empty compile "
        "cache; warm: a new process after the cold one filled it; before: the baseline checkout (no cache). "
        "torch.compile: the first call of `torch.compile(model, backend=\"kiln\")` (Dynamo's trace included), "
        "cold and warm the same way.",
        "",
        "",
        "| model | before (s) | cold (s) | cold ÷ before | warm (s) | warm ÷ cold | torch.compile cold (s) | warm (s) | warm ÷ cold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, t in times.items():
        before, cold, warm = median(t["before"]), median(t["cold"]), median(t["warm"])
        dynamo_cold, dynamo_warm = median(t["dynamo cold"]), median(t["dynamo warm"])
        lines.append(f"| {model} | {before:.2f} | {cold:.2f} | {cold / before:.2f} | {warm:.2f} | {warm / cold:.2f} | "
                     f"{dynamo_cold:.2f} | {dynamo_warm:.2f} | {dynamo_warm / dynamo_cold:.2f} |")
    lines += ["", "Slowest rows of the last cold `kiln.compile` (s):", ""]
    lines += [f"- {model}: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in t["rows"]) for model, t in times.items()]
    lines += [
        "",
        f"## `torch.compile(backend=\"kiln\")` against `kiln.compile`: latency, {args.threads} threads, "
        f"interleaved medians of {args.repeats}",
        "",
        "Last two columns: the same frame compiled with PyTorch's `options={\"guard_filter_fn\": "
        "torch.compiler.skip_guard_on_all_nn_modules_unsafe}` (Dynamo then checks no nn-module attributes on "
        "each call; benchmarks/dynamo_overhead.py).",
        "",
        "| model | kiln.compile (ms) | torch.compile backend=kiln (ms) | ratio | nn-module guards skipped (ms) | ratio |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {direct:.2f} | {dynamo:.2f} | {dynamo / direct:.2f} | {unguarded:.2f} | {unguarded / direct:.2f} |"
          for name, direct, dynamo, unguarded in latency),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
