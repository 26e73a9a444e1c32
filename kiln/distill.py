"""Knowledge distillation: fine-tune a compressed model (a pruned or low-rank IR, which runs as a
torch module) against the original, to win back the accuracy compression cost.

    pruned = kiln.compile(model, (x,), prune=kiln.Prune(0.5), target="eager")
    student = kiln.distill(model, pruned.graph.module, data, epochs=5)
    fast = kiln.compile(student, (x,))

Loss: α · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α) · cross-entropy(labels),
the second term only where `data` yields (inputs, labels) pairs.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Iterable

import torch
import torch.nn.functional as F


def trainable(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose floating-point buffers are parameters: Kiln's IR holds weights as
    buffers (constants to the compiler), which an optimizer does not see."""
    module = copy.deepcopy(module)
    for owner in list(module.modules()):
        for name, buffer in list(owner.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_floating_point():
                delattr(owner, name)
                owner.register_parameter(name, torch.nn.Parameter(buffer.detach().clone()))
    return module


class _Unwrapped(torch.nn.Module):
    """A Kiln IR module (flat tuple of outputs) that returns its one output as a tensor, as the
    model it came from did."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> Any:
        outputs = self.module(*inputs)
        return outputs[0] if isinstance(outputs, (tuple, list)) and len(outputs) == 1 else outputs


def split_batch(batch: Any) -> tuple[tuple[Any, ...], torch.Tensor | None]:
    """(the model's arguments, integer labels or None) of one batch: `x`, `(x, ...)` or `(x, labels)`."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor) and not batch[1].is_floating_point():
        return (batch[0],), batch[1]
    return (tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)), None


def distill(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    data: Iterable[Any],
    *,
    epochs: int = 3,
    temperature: float = 4.0,
    alpha: float = 0.7,
    lr: float = 1e-3,
    verbose: bool = True,
) -> torch.nn.Module:
    """The student after `epochs` passes over `data` (re-iterable: a list or a DataLoader of
    inputs, or of (inputs, integer labels)); the teacher is left untouched."""
    student = _Unwrapped(trainable(student)).train()
    teacher = teacher.eval()
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    for epoch in range(epochs):
        total, count = 0.0, 0
        for inputs, labels in map(split_batch, data):
            with torch.no_grad():
                soft_targets = F.softmax(teacher(*inputs) / temperature, -1)
            logits = student(*inputs)
            loss = alpha * temperature**2 * F.kl_div(F.log_softmax(logits / temperature, -1), soft_targets, reduction="batchmean")
            if labels is not None:
                loss = loss + (1 - alpha) * F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        if verbose:
            print(f"[kiln] distill epoch {epoch + 1}/{epochs}: loss {total / max(count, 1):.4f}", file=sys.stderr, flush=True)
    return student.eval()
