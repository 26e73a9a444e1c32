"""How long TVM's idle workers spin, and what it costs a process that also runs PyTorch.

    python benchmarks/thread_spin.py [--rounds 3] [--threads 2] [--repeats 25]

TVM reads TVM_THREAD_POOL_SPIN_COUNT once per process, so each setting runs in processes of its
own, alternated over the rounds: TVM's default (300000), Kiln's (1000, kiln/backends/tvm/runtime/
threads.py) and none (0). A first process fills a compile cache of its own; then each process
compiles ResNet-18, MobileNetV2 and BERT-base from it (a warm `kiln.compile`: eager PyTorch and
Kiln's module run in turn, and PyTorch measures their drift right after Kiln's run) and times
the module's calls. Writes benchmarks/results/thread_spin.md: per setting, the median over rounds
of each process's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fuzz import cpu_name  # noqa: E402

MODELS = ["resnet18", "mobilenet_v2", "bert_base_12l"]
SETTINGS = {"TVM's default (300000)": "300000", "Kiln's (1000)": "1000", "none (0)": "0"}


def measure(threads: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per model, this process's warm `kiln.compile` (ms: the fingerprint, the cache entry's check,
    one eager and one Kiln run and their drift) and the median ms of the compiled module's call."""
    import statistics
    import time
    import warnings

    import torch

    import kiln
    from benchmarks.models import benchmark_models

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    figures = {}
    for name in MODELS:
        torch.manual_seed(0)
        model, inputs = benchmark_models(12)[name]()
        start = time.perf_counter()
        module = kiln.compile(model.eval(), inputs, threads=threads)
        warm = time.perf_counter() - start
        calls = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(*inputs)
            calls.append(time.perf_counter() - start)
        figures[name] = {"warm compile": warm * 1e3, "call": statistics.median(calls) * 1e3,
                         "cached": float(module.report.rows[-1].name == "cache")}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "thread_spin.md"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.threads, args.repeats)))
        return
    figures: dict[str, list[dict[str, dict[str, float]]]] = {setting: [] for setting in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="kiln-cache-") as cache_dir:

        def child(spin: str) -> dict[str, dict[str, float]]:
            env = {**os.environ, "TVM_THREAD_POOL_SPIN_COUNT": spin, "TVM_NUM_THREADS": str(args.threads),
                   "KILN_CACHE_DIR": cache_dir, "KILN_CACHE": "on"}
            result = subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads), "--repeats",
                                     str(args.repeats)], env=env, capture_output=True, text=True, check=True)
            return json.loads(result.stdout.strip().splitlines()[-1])

        child(SETTINGS["Kiln's (1000)"])  # fills the cache
        for round_index in range(args.rounds):
            for setting, spin in SETTINGS.items():
                figures[setting].append(child(spin))
                assert all(model["cached"] for model in figures[setting][-1].values()), "a compile missed the cache"
                print(f"[spin] round {round_index + 1} {setting}: {figures[setting][-1]}", file=sys.stderr, flush=True)
    columns = [(name, part) for name in MODELS for part in ("warm compile", "call")]
    lines = [
        "# TVM's idle spinning beside PyTorch",
        "",
        f"`python benchmarks/thread_spin.py --rounds {args.rounds} --threads {args.threads} --repeats {args.repeats}` "
        f"on {cpu_name()}, {os.cpu_count()} cores. Milliseconds, median over {args.rounds} processes per setting "
        "(alternated) of each process's figures: its warm `kiln.compile` (from the compile cache, verified "
        f"against eager) and the median of {args.repeats} calls of the module.",
        "",
        "| TVM_THREAD_POOL_SPIN_COUNT | " + " | ".join(f"{name}: {part}" for name, part in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *(f"| {setting} | " + " | ".join(f"{statistics.median(run[name][part] for run in runs):.2f}" for name, part in columns) + " |"
          for setting, runs in figures.items()),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
