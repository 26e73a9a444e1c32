"""torch.cond with a tensor predicate compiles to a real branch (Relax If): the compiled module
takes the branch the predicate picks at call time, not the one the example inputs took."""

from __future__ import annotations

import pytest
import torch

import kiln


class Branches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda x: torch.exp(self.linear(x)).softmax(-1), lambda x: torch.tanh(x) - 1, (x,))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_tensor_predicate_picks_the_branch_at_call_time(sign):
    torch.manual_seed(0)
    model = Branches().eval()
    example = torch.rand(3, 6) * sign
    compiled = kiln.compile(model, (example,), cache=False)
    for x in (torch.rand(3, 6), -torch.rand(3, 6)):  # both branches, whichever the example took
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
