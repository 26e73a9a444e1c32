"""Coverage of real Hugging Face architectures: every entry of kiln.models.hf_corpus compiled for
llvm as `transformers` builds it, compared with eager.

    python benchmarks/coverage.py [--out benchmarks/results/coverage.md]
    python benchmarks/coverage.py --torch-compile [--families "text encoder,vision"]

`--torch-compile` compiles through `torch.compile(model, backend="kiln", options={"fallback":
False})` instead (results in coverage_torch_compile.md; the detail column adds the Kiln graphs).

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


def through_torch_compile(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[list, float]:
    """The outputs of the first call of torch.compile(backend="kiln") and the seconds it took; a
    graph Kiln refuses raises its KilnError (no eager fallback)."""
    import kiln.dynamo

    torch._dynamo.reset()
    kiln.dynamo.reset()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            got = pytree.tree_leaves(torch.compile(model, backend="kiln", options={"fallback": False})(*args, **kwargs))
    except Exception as error:
        inner = getattr(error, "inner_exception", None)
        raise inner if isinstance(inner, kiln.KilnError) else error
    return got, time.perf_counter() - start


def check(name: str, via_torch_compile: bool = False) -> tuple[str, str, float, str]:
    model, args, kwargs = CORPUS[name]()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            expected = pytree.tree_leaves(model(*args, **kwargs))
        if via_torch_compile:
            got, seconds = through_torch_compile(model, args, kwargs)
        else:
            compiled = kiln.compile(model, args, example_kwargs=kwargs, target="llvm")
            seconds = time.perf_counter() - start
            got = pytree.tree_leaves(compiled(*args, **kwargs))
    except kiln.KilnError as error:
        return type(model).__name__, "refused", time.perf_counter() - start, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    except Exception as error:  # noqa: BLE001 - the table says what escaped
        return type(model).__name__, "raw exception", time.perf_counter() - start, f"{type(error).__name__}: {str(error)[:160]}"
    worst = max((a - b).abs().max().item() / max(b.abs().max().item(), 1e-12) for a, b in zip(got, expected))
    status = "matches" if worst <= TOLERANCE and len(got) == len(expected) else "mismatch"
    graphs = f", {len(kiln.dynamo.graphs())} Kiln graph(s)" if via_torch_compile else ""
    return type(model).__name__, status, seconds, f"{worst:.1e}{graphs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="default benchmarks/results/coverage.md (coverage_torch_compile.md)")
    parser.add_argument("--torch-compile", action="store_true", help="through torch.compile(backend='kiln')")
    parser.add_argument("--families", default=None, help="comma-separated corpus families (default: all)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    out = args.out or str(Path(__file__).parent / "results" / ("coverage_torch_compile.md" if args.torch_compile else "coverage.md"))
    families = set(args.families.split(",")) if args.families else None
    rows = []
    for name in (n for n in CORPUS if families is None or CORPUS[n].family in families):
        model_class, status, seconds, detail = check(name, args.torch_compile)
        rows.append((name, CORPUS[name].family, model_class, status, seconds, detail))
        print(f"[coverage] {name}: {status} ({seconds:.1f} s) {detail}", file=sys.stderr, flush=True)
    passed = sum(row[3] == "matches" for row in rows)
    lines = [
        "# Hugging Face architectures: " + ("torch.compile(model, backend=\"kiln\", options={\"fallback\": False})"
                                             if args.torch_compile else "kiln.compile(model, example_inputs, example_kwargs, target=\"llvm\")"),
        "",
        f"`python benchmarks/coverage.py{' --torch-compile' if args.torch_compile else ''}"
        f"{' --families ' + repr(args.families) if args.families else ''}` on {cpu_name()}: **{passed} of {len(rows)} compile and match eager** "
        f"({100 * passed / len(rows):.0f}%; max |Δ| ≤ {TOLERANCE:g} × output scale on every output, caches included).",
        "Tiny configs from kiln/models/hf_corpus.py, random weights, default flags (`use_cache` left at its default),",
        f"transformers {__import__('transformers').__version__}, torch {torch.__version__}.",
        "",
        "| architecture | family | class | result | compile | max rel. Δ / error |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {f} | {c} | {s} | {t:.1f} s | {d} |" for n, f, c, s, t, d in rows]
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
