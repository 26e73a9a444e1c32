"""ONNX's node test suite (the 1,884 cases the onnx package generates) through Kiln's ONNX backend
interface and through ONNX Runtime's, on the same cases, with the suite's own tolerances.

    python benchmarks/onnx_conformance.py [--limit N] [--target llvm]
    # writes benchmarks/results/onnx_conformance.md: pass/fail by category, every failure's reason

A case is "passed" when every output matches (rtol/atol of the case); Kiln's failures are listed
with the error it raised (an unsupported op must be a clear error, never wrong numbers).
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "onnx_conformance.md"


def _category(case) -> str:
    name = case.name.removeprefix("test_")
    return "expanded (function bodies)" if "_expanded" in name else case.model.graph.node[0].op_type


def _matches(outputs, expected, case) -> bool:
    if len(outputs) != len(expected):
        return False
    for got, want in zip(outputs, expected):
        want = np.asarray(want)
        got = np.asarray(got)
        if got.shape != want.shape:
            return False
        if want.dtype.kind in "fc":
            if not np.allclose(got.astype(want.dtype), want, rtol=case.rtol, atol=case.atol, equal_nan=True):
                return False
        elif not np.array_equal(got.astype(want.dtype), want):
            return False
    return True


def _array(value):
    """Cases hold numpy arrays, or TensorProtos where numpy has no dtype (float8, int4, ...)."""
    import onnx

    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _run(backend, case) -> tuple[bool, str]:
    try:
        for inputs, expected in case.data_sets:
            inputs, expected = [_array(v) for v in inputs], [_array(v) for v in expected]
            outputs = backend.run_model(case.model, inputs)
            if not _matches(outputs, expected, case):
                return False, "wrong numbers"
        return True, ""
    except Exception as error:  # reported per case, by kind
        return False, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N cases only (a smoke run)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from onnxruntime.backend.backend import OnnxRuntimeBackend as ort_backend
    from onnx.backend.test.case.node import collect_testcases

    from kiln.ir.onnx_backend import KilnBackend

    cases = [c for c in collect_testcases(None) if c.kind == "node"][: args.limit]
    by_category: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures, start = [], time.perf_counter()
    for index, case in enumerate(cases, 1):
        kiln_ok, reason = _run(KilnBackend, case)
        ort_ok, _ = _run(ort_backend, case)
        counts = by_category[_category(case)]
        counts["cases"] += 1
        counts["kiln"] += kiln_ok
        counts["ort"] += ort_ok
        if not kiln_ok:
            failures.append((case.name, reason))
        if index % 50 == 0:
            print(f"[{index}/{len(cases)}] kiln {sum(c['kiln'] for c in by_category.values())}, "
                  f"ort {sum(c['ort'] for c in by_category.values())} ({time.perf_counter() - start:.0f} s)", flush=True)
    total = collections.Counter()
    for counts in by_category.values():
        total.update(counts)
    lines = [
        "# ONNX node test suite: Kiln (llvm) vs ONNX Runtime (CPU), same cases",
        "",
        f"{total['cases']} cases; Kiln passes {total['kiln']} ({100 * total['kiln'] / max(total['cases'], 1):.1f}%), "
        f"ONNX Runtime {total['ort']} ({100 * total['ort'] / max(total['cases'], 1):.1f}%). "
        f"`python benchmarks/onnx_conformance.py`, {time.perf_counter() - start:.0f} s.",
        "",
        "| category | cases | Kiln | ONNX Runtime |",
        "|---|---|---|---|",
        *(f"| {name} | {c['cases']} | {c['kiln']} | {c['ort']} |" for name, c in sorted(by_category.items())),
        "",
        "## Kiln's failures and their reasons",
        "",
        *(f"- `{name}`: {reason}" for name, reason in failures),
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
