"""The batches users give for calibration, pruning and distillation: `x`, `(x, ...)` or
`(x, labels)`; one reading of them for every pass that takes some."""

from __future__ import annotations

from typing import Any

import torch


def split_batch(batch: Any) -> tuple[tuple[Any, ...], torch.Tensor | None]:
    """(the model's arguments, integer labels or None) of one batch: `x`, `(x, ...)` or `(x, labels)`."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor) and not batch[1].is_floating_point():
        return (batch[0],), batch[1]
    return (tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)), None
