"""Coverage of real Hugging Face architectures: every entry of kiln.models.hf_corpus compiled for
llvm as `transformers` builds it, compared with eager.

    python benchmarks/coverage.py [--out benchmarks/results/coverage.md]

One row per architecture: family, class, compile time, max |Δ| relative to the output's scale,
and the error (class and first line) for any that does not compile or match.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.utils._pytree as pytree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kiln  # noqa: E402
from benchmarks.fuzz import cpu_name  # noqa: E402
from kiln.models.hf_corpus import CORPUS  # noqa: E402

TOLERANCE = 1e-4


def check(name: str) -> tuple[str, str, float, str]:
    model, args, kwargs = CORPUS[name]()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            expected = pytree.tree_leaves(model(*args, **kwargs))
        compiled = kiln.compile(model, args, example_kwargs=kwargs, target="llvm")
        seconds = time.perf_counter() - start
        got = pytree.tree_leaves(compiled(*args, **kwargs))
    except kiln.KilnError as error:
        return type(model).__name__, "refused", time.perf_counter() - start, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    except Exception as error:  # noqa: BLE001 - the table says what escaped
        return type(model).__name__, "raw exception", time.perf_counter() - start, f"{type(error).__name__}: {str(error)[:160]}"
    worst = max((a - b).abs().max().item() / max(b.abs().max().item(), 1e-12) for a, b in zip(got, expected))
    status = "matches" if worst <= TOLERANCE and len(got) == len(expected) else "mismatch"
    return type(model).__name__, status, seconds, f"{worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "coverage.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for name in CORPUS:
        model_class, status, seconds, detail = check(name)
        rows.append((name, CORPUS[name].family, model_class, status, seconds, detail))
        print(f"[coverage] {name}: {status} ({seconds:.1f} s) {detail}", file=sys.stderr, flush=True)
    passed = sum(row[3] == "matches" for row in rows)
    lines = [
        "# Hugging Face architectures: kiln.compile(model, example_inputs, example_kwargs, target=\"llvm\")",
        "",
        f"`python benchmarks/coverage.py` on {cpu_name()}: **{passed} of {len(rows)} compile and match eager** "
        f"({100 * passed / len(rows):.0f}%; max |Δ| ≤ {TOLERANCE:g} × output scale on every output, caches included).",
        "Tiny configs from kiln/models/hf_corpus.py, random weights, default flags (`use_cache` left at its default),",
        f"transformers {__import__('transformers').__version__}, torch {torch.__version__}.",
        "",
        "| architecture | family | class | result | compile | max rel. Δ / error |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {f} | {c} | {s} | {t:.1f} s | {d} |" for n, f, c, s, t, d in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
