"""PyTorch's ExportDB (`torch._export.db.examples`, the export team's catalogue of model
patterns): every example torch.export captures compiles and gives eager's outputs, or is refused
with a KilnError that names why; none gives other numbers, none fails with another exception."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from torch._export.db.examples import all_examples

import kiln
from kiln.testing.compare import disagreement

EXAMPLES = all_examples()


def _copies(value):
    return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, value)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_exportdb_example_matches_eager_or_is_refused_by_name(name):
    case = EXAMPLES[name]
    args, kwargs = case.example_args, case.example_kwargs or {}
    try:
        torch.export.export(case.model, _copies(args), _copies(kwargs), dynamic_shapes=case.dynamic_shapes)
    except Exception:  # noqa: BLE001 - the examples torch.export itself refuses are not Kiln's to compile
        pytest.skip("torch.export does not capture this example")
    try:
        compiled = kiln.compile(case.model, _copies(args), example_kwargs=_copies(kwargs), dynamic_shapes=case.dynamic_shapes)
    except kiln.KilnError as error:
        assert str(error), "a refusal says why"
        return
    mine, theirs = _copies((args, kwargs)), _copies((args, kwargs))
    got = compiled(*mine[0], **mine[1])
    with torch.no_grad():
        expected = case.model(*theirs[0], **theirs[1])
    assert disagreement(got, expected, 1e-5) is None
    assert disagreement(mine, theirs, 1e-5) is None, "inputs written in place differ"
