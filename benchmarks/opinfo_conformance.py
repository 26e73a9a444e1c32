"""PyTorch's operator database (OpInfo) through `kiln.compile` (llvm), sample by sample
(kiln/testing/opinfo.py: each op's first two samples at float32 and at an integer dtype,
compared with eager on the sample and on shuffled inputs).

    python benchmarks/opinfo_conformance.py [--limit N] [--jobs N] [--ops add,mul]
    # writes benchmarks/results/opinfo_conformance.md: totals, every op's outcomes, every
    # wrong answer, crash and refusal with its reason; and .json, every case's outcome, whose
    # passing ops tests/testing/test_opinfo.py runs in CI

Cases run in worker processes (benchmarks/isolated.py): a case that kills its process is a crash.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from isolated import report, run_cases  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "opinfo_conformance.md"
KINDS = ("ok", "wrong", "refused", "crashed", "not captured", "eager fails")


def _cases(ops: str | None, limit: int | None):
    from kiln.testing.opinfo import cases

    chosen = [case for case in cases() if ops is None or case.op in ops.split(",")]
    return chosen[:limit]


def _worker(first: int, end: int, ops: str | None, limit: int | None) -> None:
    from kiln.testing.opinfo import run

    for index, case in enumerate(_cases(ops, limit)[first:end], first):
        result = run(case)
        report(index, result.kind, result.detail[:300])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="the first N cases only")
    parser.add_argument("--ops", default=None, help="only these OpInfo names, comma-separated")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--worker", type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        _worker(*args.worker, args.ops, args.limit)
        return
    from fuzz import cpu_name
    import torch

    cases = _cases(args.ops, args.limit)
    start = time.perf_counter()
    selection = [*(["--ops", args.ops] if args.ops else []), *(["--limit", str(args.limit)] if args.limit else [])]
    finished = run_cases(len(cases), lambda first, end: ["--worker", str(first), str(end), *selection], args.jobs,
                         lambda done: str(dict(collections.Counter(r[0] if r else "crashed" for r in done.values()))))
    outcomes = [(case, *(finished.get(i) or ["crashed", "the case ended its worker process"])) for i, case in enumerate(cases)]
    counts = collections.Counter(kind for _, kind, *_ in outcomes)
    captured = sum(counts[kind] for kind in ("ok", "wrong", "refused", "crashed"))
    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case, kind, *_ in outcomes:
        per_op[case.op][kind] += 1
    lines = [
        "# OpInfo conformance: kiln.compile (llvm) vs eager PyTorch",
        "",
        f"`python benchmarks/opinfo_conformance.py` on {cpu_name()}, torch {torch.__version__}, "
        f"{time.perf_counter() - start:.0f} s. {len(cases)} cases (each op's first two samples at float32 and at an "
        "integer dtype), compared with eager on the sample and on the sample's elements shuffled, at 1e-4 of the "
        "output's scale (integers exactly).",
        "",
        f"Of the {captured} cases torch.export captures: **{counts['ok']} ok ({100 * counts['ok'] / max(captured, 1):.1f}%), "
        f"{counts['wrong']} wrong, {counts['refused']} refused by name, {counts['crashed']} crashed**. "
        f"Not captured by torch.export: {counts['not captured']}; not run eagerly: {counts['eager fails']}.",
        "",
    ]
    for kind in ("wrong", "crashed", "refused"):
        listed = [(case, detail) for case, found, *rest in outcomes if found == kind for detail in [rest[0] if rest else ""]]
        if listed:
            lines += [f"## {kind} ({len(listed)})", "", *(f"- `{case}`: {detail}" for case, detail in listed), ""]
    lines += ["## Per op", "", "| op | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
    lines += [f"| {op} | " + " | ".join(str(c[kind] or "") for kind in KINDS) + " |" for op, c in sorted(per_op.items())]
    Path(args.out).write_text("\n".join(lines) + "\n")
    if args.ops is None and args.limit is None:  # what tests/testing/test_opinfo.py runs: every op and dtype that passed
        table = [[case.op, str(case.dtype).removeprefix("torch."), case.sample, kind] for case, kind, *_ in outcomes]
        Path(args.out).with_suffix(".json").write_text(json.dumps(table, indent=0) + "\n")
    print("\n".join(lines[:6]))


if __name__ == "__main__":
    main()
