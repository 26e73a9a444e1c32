"""Whether a compiled module's outputs are eager PyTorch's: the one comparison every suite uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree


def disagreement(got: Any, want: Any, tolerance: float) -> str | None:
    """None when `got` has `want`'s structure, Python values, shapes and dtypes, and its float
    tensors are within `tolerance` of the expected output's scale (NaN where NaN, infinities
    where they are); integer and boolean tensors equal. Otherwise what differs, in a line."""
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    if got_spec != want_spec:
        return f"output structure {got_spec} instead of {want_spec}"
    for position, (a, b) in enumerate(zip(got_leaves, want_leaves)):
        if not isinstance(b, torch.Tensor) or not isinstance(a, torch.Tensor):
            if type(a) is not type(b) or not (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))):
                return f"output {position}: {a!r} instead of {b!r}"
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {position}: {a.dtype}{tuple(a.shape)} instead of {b.dtype}{tuple(b.shape)}"
        a, b = a.detach().cpu(), b.detach().cpu()
        if not (b.is_floating_point() or b.is_complex()):
            if not torch.equal(a, b):
                return f"output {position}: {int((a != b).sum())} of {b.numel()} elements differ"
            continue
        a, b = a.double() if not a.is_complex() else a, b.double() if not b.is_complex() else b
        same = (a == b) | (a.isnan() & b.isnan())
        if same.all():
            continue
        finite = b[b.isfinite()]
        scale = max(finite.abs().max().item(), 1e-30) if finite.numel() else 1.0
        error = (a - b)[~same].abs().max().item()
        if not error <= tolerance * scale:
            return f"output {position}: max |Δ| {error:.3e} of scale {scale:.3e}"
    return None


@dataclass
class Verdict:
    """What a suite made of one case: its kind (each suite names its own: matched, refused,
    wrong, crashed, ...), a line of detail, and the case itself where it is worth printing."""

    kind: str
    detail: str = ""
    case: Any = field(default=None, repr=False)
