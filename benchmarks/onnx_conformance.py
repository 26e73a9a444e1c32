"""ONNX's node test suite (the 1,884 cases the onnx package generates) through Kiln's ONNX backend
interface and through ONNX Runtime's, on the same cases, with the suite's own tolerances.

    python benchmarks/onnx_conformance.py [--limit N] [--jobs N]
    # writes benchmarks/results/onnx_conformance.md: pass/fail by category, every failure's reason

Cases run in worker processes (one per core by default): a case whose compiled code kills its
process is recorded as a crash, and the run goes on with the next one.

A case is "passed" when every output matches (rtol/atol of the case); Kiln's failures are listed
with the error it raised (an unsupported op must be a clear error, never wrong numbers).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading
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
        if want.dtype.kind == "V" or want.dtype.name.startswith(("bfloat16", "float8")):  # ml_dtypes floats
            want, got = want.astype(np.float32), got.astype(np.float32)
        if got.shape != want.shape or got.dtype != want.dtype:  # float8/int4 outputs come back as such too
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


def _cases(limit: int | None):
    from onnx.backend.test.case.node import collect_testcases

    return [c for c in collect_testcases(None) if c.kind == "node"][:limit]


def _worker(first: int, last: int, limit: int | None) -> None:
    """Runs cases first..last-1 and prints one tab-separated line per case as it finishes."""
    from onnxruntime.backend.backend import OnnxRuntimeBackend as ort_backend

    from kiln.ir.onnx_backend import KilnBackend

    for case in _cases(limit)[first:last]:
        kiln_ok, reason = _run(KilnBackend, case)
        ort_ok, _ = _run(ort_backend, case)
        print(f"{CASE_LINE}\t{case.name}\t{int(kiln_ok)}\t{int(ort_ok)}\t{reason}", flush=True)


CASE_LINE = "kiln-conformance-case"


def _run_shard(names: list[str], first: int, limit: int | None, results: dict, lock: threading.Lock) -> None:
    """Runs names[first:] in worker processes; a case that kills its worker (a signal from
    compiled code) is recorded as a crash and the next worker resumes after it."""
    position = first
    end = first + len(names)
    while position < end:
        command = [sys.executable, __file__, "--worker", str(position), str(end)] + (["--limit", str(limit)] if limit else [])
        worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ)
        for line in worker.stdout:
            if line.startswith(CASE_LINE):
                _, name, kiln_ok, ort_ok, reason = line.rstrip("\n").split("\t", 4)
                with lock:
                    results[name] = (kiln_ok == "1", ort_ok == "1", reason)
                position += 1
        code = worker.wait()
        if position < end:  # the worker died on this case
            with lock:
                results[names[position - first]] = (False, False, f"crashed: worker process ended with status {code}")
            position += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="first N cases only (a smoke run)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes (default: one per core)")
    parser.add_argument("--worker", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    # ONNX Runtime's backend otherwise tries every provider the GPU wheel lists, on a machine without a GPU too
    os.environ.setdefault("ORT_ONNX_BACKEND_EXCLUDE_PROVIDERS", "TensorrtExecutionProvider,CUDAExecutionProvider")
    if args.worker:
        _worker(*args.worker, args.limit)
        return
    import onnx
    import onnxruntime

    cases = _cases(args.limit)
    names = [case.name for case in cases]
    results: dict[str, tuple[bool, bool, str]] = {}
    lock, start = threading.Lock(), time.perf_counter()
    shard = -(-len(cases) // args.jobs)
    threads = [
        threading.Thread(target=_run_shard, args=(names[i:i + shard], i, args.limit, results, lock))
        for i in range(0, len(cases), shard)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        time.sleep(30)
        with lock:
            done = list(results.values())
        print(f"[{len(done)}/{len(cases)}] kiln {sum(r[0] for r in done)}, ort {sum(r[1] for r in done)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    by_category: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures = []
    for case in cases:
        kiln_ok, ort_ok, reason = results[case.name]
        counts = by_category[_category(case)]
        counts["cases"] += 1
        counts["kiln"] += kiln_ok
        counts["ort"] += ort_ok
        if not kiln_ok:
            failures.append((case.name, reason))
    total = collections.Counter()
    for counts in by_category.values():
        total.update(counts)
    lines = [
        "# ONNX node test suite: Kiln (llvm) vs ONNX Runtime (CPU), same cases",
        "",
        f"{total['cases']} cases; Kiln passes {total['kiln']} ({100 * total['kiln'] / max(total['cases'], 1):.1f}%), "
        f"ONNX Runtime {total['ort']} ({100 * total['ort'] / max(total['cases'], 1):.1f}%). "
        f"`python benchmarks/onnx_conformance.py`, {time.perf_counter() - start:.0f} s on {args.jobs} processes, "
        f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}.",
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
