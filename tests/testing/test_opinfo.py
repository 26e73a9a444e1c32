"""PyTorch's OpInfo samples for the ops Kiln supports (kiln/testing/opinfo.py): one case of every
op and dtype that passed in the committed conformance run (benchmarks/results/opinfo_conformance.json,
written by `python benchmarks/opinfo_conformance.py`) must still give eager's numbers, on the
sample and on it shuffled. A regression in a converter shows here by op name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kiln.testing.opinfo import UNDEFINED_VALUES, Case, run

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "opinfo_conformance.json"


def _passing() -> list[Case]:
    chosen: dict[tuple[str, str], Case] = {}
    for op, dtype, sample, kind in json.loads(RESULTS.read_text()):
        if kind == "ok" and op not in UNDEFINED_VALUES:  # uninitialized memory: no numbers to hold it to
            chosen.setdefault((op, dtype), Case(op, getattr(torch, dtype), sample))
    return list(chosen.values())


CASES = _passing()


def test_the_committed_run_has_cases():
    assert len(CASES) > 500, "benchmarks/results/opinfo_conformance.json lost its passing cases"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_supported_op_gives_eagers_numbers(case):
    result = run(case)
    assert result.kind == "ok", f"{case}: {result.kind}: {result.detail}"
