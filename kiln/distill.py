"""Knowledge distillation: fine-tune a compressed model (a pruned or low-rank IR, which runs as a
torch module) against the original, to win back the accuracy compression cost.

    pruned = kiln.compile(model, (x,), prune=kiln.Prune(0.5), target="eager")
    student = kiln.distill(model, pruned.graph.module, data, epochs=5)
    fast = kiln.compile(student, (x,))

Loss: α · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α) · cross-entropy(labels),
the second term only where `data` yields (inputs, labels) pairs. After quantization, distill the
float IR with `fake_quant=True` (quantization-aware fine-tuning), then quantize it again.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Iterable

import torch
import torch.fx
import torch.nn.functional as F

from kiln import fake_quant as fake_quantization
from kiln.passes.batches import split_batch
from kiln.errors import KilnError


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


def distill(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    data: Iterable[Any],
    *,
    epochs: int = 3,
    temperature: float = 4.0,
    alpha: float = 0.7,
    lr: float = 1e-3,
    fake_quant: bool = False,
    verbose: bool = True,
) -> torch.nn.Module:
    """The student after `epochs` passes over `data` (re-iterable: a list or a DataLoader of
    inputs, or of (inputs, integer labels)); the teacher is left untouched. With
    `fake_quant=True` (the student a Kiln IR module, e.g. `compiled.graph.module`) training sees
    the int8 rounding of every conv/linear layer (kiln/fake_quant.py): quantization-aware
    fine-tuning, to be followed by `kiln.compile(student, ..., quantize="int8")`."""
    learner = trainable(student)
    if fake_quant:
        if not isinstance(learner, torch.fx.GraphModule):
            raise KilnError("distill(fake_quant=True) needs a Kiln IR module as the student (compiled.graph.module)")
        fake_quantization.insert(learner)
    student = _Unwrapped(learner).train()
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
    if fake_quant:
        fake_quantization.remove(learner)
    return student.eval()
