"""Ops the TVM importer got wrong or refused, lowered by Kiln's converters: each equals eager."""

import pytest
import torch

import kiln
from tests.conftest import eager


class Indexed(torch.nn.Module):
    def __init__(self, pick):
        super().__init__()
        self.pick = pick

    def forward(self, x, i, j):
        return self.pick(x, i, j)


INDEXING = {
    "adjacent index tensors broadcast": lambda x, i, j: x[:, i, j],
    "separated index tensors move to the front": lambda x, i, j: x[i, :, j],
    "one negative index": lambda x, i, j: x[:, :, j],
    "every axis indexed": lambda x, i, j: x[i, j, 0, 0],
    "constant negative index (Falcon's key slice)": lambda x, i, j: x[..., [-2], :],
}


@pytest.mark.parametrize("case", INDEXING)
def test_advanced_indexing_wraps_negative_indices_and_broadcasts(case):
    model = Indexed(INDEXING[case])
    inputs = (torch.randn(3, 5, 7, 4), torch.tensor([[0, -1], [2, 1]]), torch.tensor([1, -3]))
    compiled = kiln.compile(model, inputs)
    assert torch.equal(compiled(*inputs), eager(model, *inputs))


class Squeezes(torch.nn.Module):
    def forward(self, x):
        a = x.unsqueeze(3).squeeze(-2)  # a dim of size 3: torch leaves it, the importer squeezed all
        b = x.unsqueeze(-2).squeeze(-2)  # a negative size-1 dim
        return a, b


def test_squeeze_of_a_dim_that_is_not_one_is_a_noop():
    x = torch.randn(2, 1, 3)
    compiled = kiln.compile(Squeezes(), (x,))
    for got, want in zip(compiled(x), eager(Squeezes(), x)):
        assert got.shape == want.shape and torch.equal(got, want)


class CatOntoEmpty(torch.nn.Module):
    """A transformers DynamicCache concatenates each layer's first keys onto torch.tensor([])."""

    def forward(self, x):
        return torch.cat([torch.tensor([]), x], dim=-2)


def test_cat_skips_legacy_empty_tensors():
    x = torch.randn(1, 2, 5, 4)
    assert torch.equal(kiln.compile(CatOntoEmpty(), (x,))(x), eager(CatOntoEmpty(), x))


FLOAT64 = {
    "grouped strided conv2d": (lambda: torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
    "conv1d with bias": (lambda: torch.nn.Conv1d(3, 5, 3, padding=1), (2, 3, 10)),
    "layer norm": (lambda: torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6)), (3, 6)),
}


@pytest.mark.parametrize("case", FLOAT64)
def test_float64_layers_compute_in_float64(case):
    """Found by the fuzzer: the importer's float32 convolutions gave float64 models float32
    accuracy, and TVM's layer norm refused float64."""
    build, shape = FLOAT64[case]
    model, x = build().double().eval(), torch.randn(shape, dtype=torch.float64)
    got, want = kiln.compile(model, (x,))(x), eager(model, x)
    assert got.dtype == torch.float64
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()


def test_kernel_sources_read_a_uniquified_binding_as_its_own_node_not_the_node_its_digits_spell():
    from kiln.backends.tvm.provenance import kiln_names

    known = {"conv2d_1", "conv2d_11", "add_1"}
    assert kiln_names(["conv2d_1", "conv2d_11", "add_12", "lv3"], known) == ["conv2d_1", "add_1"]
    assert kiln_names(["conv2d_11", "add_1"], known) == ["conv2d_11", "add_1"]


class Sorted(torch.nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values * 2


def test_an_op_no_lowering_takes_is_named_before_code_generation(monkeypatch):
    """TVM lowers no Relax argsort on the CPU (Kiln's converter sorts through TVM's sort library):
    with TVM's own converter, the op reached the VM code generator, whose error named neither the
    op's node nor the model line."""
    from kiln.backends.tvm.converters import CONVERTERS

    monkeypatch.delitem(CONVERTERS, "sort.default")
    with pytest.raises(kiln.UnsupportedOpError, match=r"relax.argsort .*node 'sort'"):
        kiln.compile(Sorted(), (torch.randn(4, 8),), cache=False)
