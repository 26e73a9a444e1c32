"""What a compiled module checks of its indices after each call: the guarded indices
(kiln/backends/tvm/index_guard.py puts the guards in the graph) and the check of the report the
program's last output holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from kiln.backends.tvm.runtime.bundle_runner import index_problem
from kiln.errors import IndexOutOfRangeError


@dataclass(frozen=True)
class IndexCheck:
    """One guarded index: the node that indexes with it, where it came from, and whether
    negative indices count from the end there."""

    node: str
    op: str
    source: str
    negative: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "IndexCheck":
        return cls(**data)


def check_indices(checks: Sequence[IndexCheck], reported: torch.Tensor) -> None:
    """Raise IndexOutOfRangeError for the first check whose index left its range in this call."""
    problem = index_problem([check.to_json() for check in checks], reported.tolist())
    if problem is not None:
        raise IndexOutOfRangeError(problem)
