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
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from isolated import report, run_cases  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "onnx_conformance.md"
PRECISION = "precision"  # a failure's reason: closer to exact than the suite's expected outputs
UNDEFINED = "undefined"  # a failure's reason: differs only where ONNX leaves the result undefined


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


def _widened(model):
    """`model` computing in float64 wherever it computes in float16 or bfloat16: its inputs,
    outputs, value infos, initializers, constants and casts."""
    import onnx

    half, double = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16), onnx.TensorProto.DOUBLE
    wide = onnx.ModelProto.FromString(model.SerializeToString())
    graph = wide.graph

    def widen_tensor(tensor):
        if tensor.data_type in half:
            tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float64), tensor.name))

    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type in half:
            value.type.tensor_type.elem_type = double
    for tensor in graph.initializer:
        widen_tensor(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i in half:
                attribute.i = double
            elif attribute.type == onnx.AttributeProto.TENSOR:
                widen_tensor(attribute.t)
    return wide


def half_precision_errors(case, inputs, outputs, expected) -> tuple[float, float] | None:
    """For a case whose outputs are float16/bfloat16: the largest distance of `outputs` and of the
    suite's `expected` outputs from the same graph computed in float64 by ONNX's reference
    evaluator (None for other cases, or where the graph does not widen). The suite's expected
    outputs round every intermediate to the half type in numpy's order (a bfloat16 sum accumulates
    in bfloat16, element by element), so a backend that accumulates in float32 can be an ulp off
    them while being closer to the exact result."""
    from onnx.reference import ReferenceEvaluator

    if not all(np.asarray(e).dtype.name in ("float16", "bfloat16") for e in expected):
        return None
    names = [i.name for i in case.model.graph.input]
    feeds = {n: (x.astype(np.float64) if x.dtype.name in ("float16", "bfloat16") else x) for n, x in zip(names, inputs)}
    try:
        exact = ReferenceEvaluator(_widened(case.model)).run(None, feeds)
    except Exception:  # a graph the widening does not cover: no verdict
        return None

    def error(arrays) -> float:
        return max(float(np.nanmax(np.abs(np.asarray(a).astype(np.float64) - t))) for a, t in zip(arrays, exact))

    return error(outputs), error(expected)


def _ulps(outputs, expected) -> int:
    """The largest distance between outputs and expected outputs of a half type, in units in the
    last place of the expected value."""
    import ml_dtypes

    worst = 0.0
    for got, want in zip(outputs, expected):
        info = ml_dtypes.finfo(np.asarray(want).dtype)
        eps, tiny = float(info.eps), float(info.smallest_normal)
        want, got = np.asarray(want).astype(np.float64), np.asarray(got).astype(np.float64)
        ulp = eps * 2.0 ** np.floor(np.log2(np.maximum(np.abs(want), tiny)))
        worst = max(worst, float(np.nanmax(np.abs(got - want) / ulp)))
    return round(worst)


def _differs_only_where_undefined(case, inputs, outputs, expected) -> bool:
    """Whether a one-Cast graph from floats to integers misses only at inputs out of the integer
    type's range (ONNX: "fixed point: undefined if OOR")."""
    import onnx

    import ml_dtypes

    graph = case.model.graph
    if [n.op_type for n in graph.node] not in (["Cast"], ["CastLike"]) or np.asarray(inputs[0]).dtype.kind != "f":
        return False
    try:  # ml_dtypes' iinfo knows numpy's integers and its own (int4, int2, ...)
        info = ml_dtypes.iinfo(onnx.helper.tensor_dtype_to_np_dtype(graph.output[0].type.tensor_type.elem_type))
    except ValueError:
        return False
    truncated = np.trunc(np.asarray(inputs[0]).astype(np.float64))
    out_of_range = ~np.isfinite(truncated) | (truncated < int(info.min)) | (truncated > int(info.max))
    missed = np.asarray(outputs[0]).astype(np.int64) != np.asarray(expected[0]).astype(np.int64)
    return bool(missed.any()) and not (missed & ~out_of_range).any()


def _run(backend, case) -> tuple[bool, str]:
    try:
        for inputs, expected in case.data_sets:
            inputs, expected = [_array(v) for v in inputs], [_array(v) for v in expected]
            outputs = backend.run_model(case.model, inputs)
            if not _matches(outputs, expected, case):
                errors = half_precision_errors(case, inputs, outputs, expected)
                if errors and errors[0] <= errors[1]:
                    return False, (f"{PRECISION}: up to {_ulps(outputs, expected)} ulp off the expected "
                                   f"{np.asarray(expected[0]).dtype.name} outputs, which are further from the float64 "
                                   f"result (max error {errors[0]:.2g}; expected outputs {errors[1]:.2g}: the reference "
                                   f"rounds each partial sum to the half type)")
                if _differs_only_where_undefined(case, inputs, outputs, expected):
                    return False, (f"{UNDEFINED}: differs from the expected outputs only at inputs outside the integer "
                                   f"type's range, which ONNX's Cast leaves undefined (there the expected values are "
                                   f"what this CPU's float-to-integer conversion in ml_dtypes gave)")
                return False, "wrong numbers"
        return True, ""
    except Exception as error:  # reported per case, by kind
        return False, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"


def _cases(limit: int | None):
    from onnx.backend.test.case.node import collect_testcases

    return [c for c in collect_testcases(None) if c.kind == "node"][:limit]


def _worker(first: int, last: int, limit: int | None) -> None:
    """Runs cases first..last-1, reporting each as it finishes (benchmarks/isolated.py)."""
    from onnxruntime.backend.backend import OnnxRuntimeBackend as ort_backend

    from kiln.testing.onnx_backend import KilnBackend

    for index, case in enumerate(_cases(limit)[first:last], first):
        kiln_ok, reason = _run(KilnBackend, case)
        ort_ok, _ = _run(ort_backend, case)
        report(index, case.name, str(int(kiln_ok)), str(int(ort_ok)), reason)


def _failure_kind(reason: str) -> str:
    if reason.startswith((PRECISION, UNDEFINED)) or reason == "wrong numbers":
        return reason.split(":")[0]
    if reason.startswith(("UnsupportedOpError", "FrontendError", "ValueRequiredError")):
        return "refused"
    return "other"


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
    start = time.perf_counter()
    limit = ["--limit", str(args.limit)] if args.limit else []
    finished = run_cases(len(cases), lambda first, end: ["--worker", str(first), str(end), *limit], args.jobs,
                         lambda done: f"kiln {sum(r[1] == '1' for r in done.values() if r)}, "
                                      f"ort {sum(r[2] == '1' for r in done.values() if r)}")
    results = {}
    for index, case in enumerate(cases):
        fields = finished.get(index)
        results[case.name] = ((fields[1] == "1", fields[2] == "1", fields[3] if len(fields) > 3 else "") if fields
                              else (False, False, "crashed: the case ended its worker process"))
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
    kinds = collections.Counter(_failure_kind(reason) for _, reason in failures)
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
        f"{len(failures)} failures: {kinds['refused']} refused by name (an unsupported op, type or attribute), "
        f"{kinds[PRECISION]} {PRECISION} (outputs an ulp or two off half-precision expected outputs, and closer than "
        f"those to the float64 result), {kinds[UNDEFINED]} {UNDEFINED} (differ only where ONNX leaves the result "
        f"undefined), {kinds['wrong numbers']} wrong numbers, {kinds['other']} other errors.",
        "",
        *(f"- `{name}`: {reason}" for name, reason in failures),
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
