"""What checking indices costs (kiln/backends/tvm/index_guard.py): a `transformers` BERT-base
(default config, random weights, 128 tokens) built with the guard, as Kiln builds it, and without
it, timed interleaved in one process at 1 thread and at every core.

    python benchmarks/index_guard.py [--rounds 30] [--sequence 128]
    # writes benchmarks/results/index_guard.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "index_guard.md"


def build(model, ids, threads: int, guarded: bool):
    import kiln
    import kiln.backends.tvm as tvm_backend

    original = tvm_backend.guard_indices
    if not guarded:
        tvm_backend.guard_indices = lambda graph: (graph, [])
    try:
        return kiln.compile(model, (ids,), threads=threads, cache=False)
    finally:
        tvm_backend.guard_indices = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sequence", type=int, default=128)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig()).eval()
    ids = torch.randint(0, 30522, (1, args.sequence))
    rows = []
    for threads in (1, os.cpu_count() or 1):
        modules = {"guarded": build(model, ids, threads, True), "unguarded": build(model, ids, threads, False)}
        assert len(modules["guarded"].executable.index_checks) == 1 and not modules["unguarded"].executable.index_checks
        times: dict[str, list[float]] = {name: [] for name in modules}
        for name, module in modules.items():  # warm
            module(ids)
        for _ in range(args.rounds):
            for name, module in modules.items():
                start = time.perf_counter()
                module(ids)
                times[name].append(time.perf_counter() - start)
        guarded, unguarded = (statistics.median(times[name]) * 1e3 for name in ("guarded", "unguarded"))
        rows.append(f"| {threads} | {unguarded:.2f} ms | {guarded:.2f} ms | {guarded / unguarded:.3f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "# The cost of checking indices",
        "",
        f"`python benchmarks/index_guard.py --rounds {args.rounds} --sequence {args.sequence}` on {cpu_name()}: a "
        f"`transformers` BERT-base (default config, random weights), {args.sequence} tokens, one guarded index (the "
        "word embedding's; position and token-type ids are constants), medians of "
        f"{args.rounds} interleaved calls, torch {torch.__version__}.",
        "",
        "| threads | without the check | with it | ratio |",
        "|---|---|---|---|",
        *rows,
    ])
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
