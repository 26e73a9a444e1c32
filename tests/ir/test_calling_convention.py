"""What a compiled module takes and gives back is what the eager model takes and gives back:
inputs it writes in place are written in the caller's tensors, outputs of any structure (Python
values, None, nothing at all) come back as they are, and what Kiln cannot keep is refused by name."""

from __future__ import annotations

import pytest
import torch
from torch._export.db.examples import all_examples

import kiln
from kiln.testing.compare import disagreement


def test_an_input_the_model_writes_in_place_is_written_in_the_callers_tensor():
    case = all_examples()["user_input_mutation"]  # torch's ExportDB: x.mul_(2); return x.cos()
    (x,) = case.example_args
    compiled = kiln.compile(case.model, (x.clone(),))
    mine, theirs = x.clone(), x.clone()
    expected = case.model(theirs)
    assert disagreement(compiled(mine), expected, 1e-5) is None
    assert torch.allclose(mine, theirs) and not torch.equal(mine, x)
    compiled(mine)  # and again, from the value it left
    case.model(theirs)
    assert torch.allclose(mine, theirs)


class AddsOneInPlace(torch.nn.Module):
    def forward(self, x):
        return x.add_(1)


def test_a_model_that_returns_the_input_it_wrote():
    compiled = kiln.compile(AddsOneInPlace(), (torch.zeros(3),))
    given = torch.zeros(3)
    result = compiled(given)
    assert given.tolist() == [1.0, 1.0, 1.0] and result.tolist() == [1.0, 1.0, 1.0]


class Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x + self.calls


def test_a_buffer_the_forward_updates_is_refused_by_name():
    with pytest.raises(kiln.FrontendError, match="updates its buffer 'calls' in place"):
        kiln.compile(Counter(), (torch.zeros(2),))


class Returns(torch.nn.Module):
    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def forward(self, x):
        return self.make(x)


STRUCTURES = {
    "a Python number": lambda x: x.shape[0] * 2,
    "None": lambda x: None,
    "an empty tuple": lambda x: (),
    "containers of Python values": lambda x: {"a": (1, "s"), "b": [None, 2.5]},
    "values beside a tensor": lambda x: {"a": (1, "s"), "b": [None, x + 1]},
    "the input itself, twice": lambda x: (x, x),
    "a torch.Size": lambda x: x.shape,
}


@pytest.mark.parametrize("name", STRUCTURES)
def test_outputs_of_any_structure_come_back_as_eager_gives_them(name):
    model, x = Returns(STRUCTURES[name]), torch.randn(3)
    compiled = kiln.compile(model, (x,))
    assert disagreement(compiled(x), model(x), 1e-6) is None


class NoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(3.0))

    def forward(self):
        return self.w * 2


def test_a_model_without_inputs():
    assert kiln.compile(NoInputs(), ())().tolist() == [0.0, 2.0, 4.0]


def test_a_python_number_computed_from_data_is_refused_by_name():
    with pytest.raises(kiln.FrontendError, match=r"\.item\(\)"):
        kiln.compile(Returns(lambda x: x.sum().item()), (torch.randn(3),))
