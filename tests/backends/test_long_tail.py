"""Ops of ATen's long tail (kiln/backends/tvm/decompositions.py, converters/index.py,
import_rewrites.py) against eager on values chosen to break them: NaN, ±inf, −0.0, ties, values
at bin edges, huge and tiny magnitudes, 0-d tensors. Exact where torch's result is exact."""

from __future__ import annotations

import math

import pytest
import torch

import kiln

INF, NAN = math.inf, math.nan


class OpCall(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, *args):
        result = self.op(*args)
        return tuple(result) if isinstance(result, (tuple, list)) else result


def hostile(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random values with NaN, ±inf, ±0.0, repeats and large and tiny magnitudes mixed in."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator) * 3
    specials = torch.tensor([NAN, INF, -INF, 0.0, -0.0, 1e-30, -1e-30, 1e30, 88.5, -89.0, 1.0, 1.0, 2.0])
    chosen = torch.rand(shape, generator=generator) < 0.3
    values[chosen] = specials[torch.randint(len(specials), (int(chosen.sum()),), generator=generator)]
    return values


def assert_same(got, want, exact_indices: bool = True):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, (a, b)
        if a.is_floating_point():
            torch.testing.assert_close(a, b, equal_nan=True, rtol=2e-6, atol=0)
            assert torch.equal(torch.signbit(a[a == 0]), torch.signbit(b[b == 0])), "the sign of a zero differs"
        elif exact_indices:
            assert torch.equal(a, b), (a, b)


def compiled(op, *args):
    return kiln.compile(OpCall(op), args, cache=False, allow_nonfinite_inputs=True, verify=False)


UNARY = {
    "cosh": torch.cosh,
    "sinh": torch.sinh,
    "sort": lambda x: torch.sort(x, dim=-1),
    "sort_descending_stable": lambda x: torch.sort(x, dim=0, descending=True, stable=True),
    "argsort": lambda x: torch.argsort(x, dim=-1, stable=True),
    "max_dim": lambda x: torch.max(x, dim=1),
    "min_dim_keepdim": lambda x: torch.min(x, dim=0, keepdim=True),
    "any_of_floats": lambda x: torch.any(x, dim=1),
    "all_of_floats": lambda x: torch.all(x, dim=0, keepdim=True),
}


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("seed", [0, 1])
def test_a_unary_op_gives_eagers_values_on_hostile_inputs(name, seed):
    x = hostile((4, 9), seed)
    op = UNARY[name]
    assert_same(compiled(op, x)(x), OpCall(op)(x))
    other = hostile((4, 9), seed + 10)  # the same build on other values: not the example's numbers baked in
    assert_same(compiled(op, x)(other), OpCall(op)(other))


@pytest.mark.parametrize("largest", [True, False])
def test_topk_gives_eagers_values_and_indices_of_those_values(largest):
    """torch leaves the order of tied values' indices unspecified (its CPU kernel does not keep
    them in index order): the values must be eager's, and each index must point at its value."""
    x = hostile((3, 10), 3)
    got_values, got_indices = compiled(lambda x: torch.topk(x, 4, dim=1, largest=largest), x)(x)
    want_values, _ = torch.topk(x, 4, dim=1, largest=largest)
    torch.testing.assert_close(got_values, want_values, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(torch.gather(x, 1, got_indices), want_values, equal_nan=True, rtol=0, atol=0)


BINARY = {
    "hypot": torch.hypot,
    "fmax": torch.fmax,
    "fmin": torch.fmin,
    "copysign": torch.copysign,
}


@pytest.mark.parametrize("name", BINARY)
def test_a_binary_op_gives_eagers_values_on_hostile_inputs(name):
    a, b = hostile((5, 7), 4), hostile((5, 7), 5)
    assert_same(compiled(BINARY[name], a, b)(a, b), BINARY[name](a, b))


def test_hypot_does_not_overflow_where_the_result_is_finite():
    a, b = torch.tensor([3e30, 1e-30, 3.0]), torch.tensor([4e30, 1e-30, 4.0])
    assert_same(compiled(torch.hypot, a, b)(a, b), torch.hypot(a, b))


@pytest.mark.parametrize("bins,low,high", [(4, 0, 3), (7, -1.3, 2.9), (1, 0, 1), (16, -3.7, 1e-3)])
def test_histc_counts_values_on_every_bin_edge_as_torch_does(bins, low, high):
    edges = torch.linspace(low, high, bins + 1)
    x = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1), hostile((40,), bins)])
    op = lambda x: torch.histc(x, bins=bins, min=low, max=high)  # noqa: E731
    assert_same(compiled(op, x)(x), op(x))


def test_histc_over_a_range_from_the_data_is_refused_by_name():
    x = torch.randn(10)
    with pytest.raises(kiln.UnsupportedOpError, match="min == max"):
        kiln.compile(OpCall(lambda x: torch.histc(x, bins=4)), (x,), cache=False)


REDUCTIONS_OF_A_SCALAR = {
    "sum": lambda x: x.sum(0),
    "amax": lambda x: x.amax(-1),
    "argmax": lambda x: x.argmax(),
    "argmax_keepdim": lambda x: x.argmax(0, keepdim=True),
    "mean_keepdim": lambda x: x.mean([0], keepdim=True),
    "cumsum": lambda x: x.cumsum(0),
    "std": lambda x: x.std(0),
    "logsumexp": lambda x: x.logsumexp(0),
    "prod": lambda x: x.prod(0),
    "any": lambda x: x.any(0),
    "vector_norm": lambda x: torch.linalg.vector_norm(x, 2, 0),
    "sort": lambda x: torch.sort(x),
    "max_dim": lambda x: torch.max(x, 0),
}


@pytest.mark.parametrize("name", REDUCTIONS_OF_A_SCALAR)
def test_a_reduction_of_a_0d_tensor_gives_eagers_value(name):
    x = torch.tensor(-2.5)
    op = REDUCTIONS_OF_A_SCALAR[name]
    assert_same(compiled(op, x)(x), OpCall(op)(x))


def test_scatter_add_and_var_mean_give_eagers_values():
    x, index, source = torch.zeros(3, 5), torch.randint(0, 5, (3, 4)), torch.randn(3, 4)
    op = lambda x, i, s: x.scatter_add(1, i, s)  # noqa: E731
    torch.testing.assert_close(compiled(op, x, index, source)(x, index, source), op(x, index, source))
    y = torch.randn(4, 6)
    op = lambda y: torch.var_mean(y, 1, correction=0)  # noqa: E731
    got, want = compiled(op, y)(y), op(y)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layer,shape", [
    (lambda: torch.nn.Conv1d(3, 4, 3, padding="same"), (3, 10)),
    (lambda: torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), (3, 8, 8)),
    (lambda: torch.nn.Conv3d(2, 3, 2), (2, 4, 4, 4)),
])
def test_a_convolution_of_an_unbatched_input_gives_eagers_values(layer, shape):
    torch.manual_seed(0)
    model, x = layer().eval(), torch.randn(shape)
    compiled_model = kiln.compile(model, (x,), cache=False)
    torch.testing.assert_close(compiled_model(x), model(x), rtol=1e-5, atol=1e-5)


def test_exp2_is_exact_at_integers_and_unfold_gathers_every_window():
    x = torch.tensor([0.0, 1.0, 3.0, -2.0, 10.0, 0.5])
    assert torch.equal(compiled(torch.exp2, x)(x), torch.exp2(x))
    for shape, dim, size, step in [((2, 11, 3), 1, 4, 2), ((2, 10), -1, 3, 3), ((5,), 0, 2, 1)]:
        y = torch.randn(shape)
        op = lambda y: y.unfold(dim, size, step)  # noqa: E731
        assert torch.equal(compiled(op, y)(y), op(y))


def test_addmv_ignores_its_term_where_beta_is_zero_and_addbmm_sums_the_batch():
    term, matrix, vector = torch.full((4,), NAN), torch.randn(4, 3), torch.randn(3)
    op = lambda t, m, v: torch.addmv(t, m, v, beta=0, alpha=2)  # noqa: E731
    torch.testing.assert_close(compiled(op, term, matrix, vector)(term, matrix, vector), op(term, matrix, vector))
    term, first, second = torch.randn(4, 5), torch.randn(2, 4, 3), torch.randn(2, 3, 5)
    op = lambda t, a, b: torch.addbmm(t, a, b, beta=0.5)  # noqa: E731
    torch.testing.assert_close(compiled(op, term, first, second)(term, first, second), op(term, first, second))


@pytest.mark.parametrize("options", [{}, {"right": True}, {"side": "right", "out_int32": True}])
def test_searchsorted_places_nan_and_infinities_as_torch_does(options):
    sequence = torch.tensor([-INF, -1.0, 0.0, 0.0, 2.0, 5.0, INF])
    values = torch.tensor([[NAN, -INF, 0.0, 0.5, 2.0, INF, 7.0, -3.0]])
    op = lambda s, v: torch.searchsorted(s, v, **options)  # noqa: E731
    assert_same(compiled(op, sequence, values)(sequence, values), op(sequence, values))
    rows, queries = torch.sort(torch.randn(3, 6), dim=1)[0], torch.randn(3, 4)
    assert_same(compiled(op, rows, queries)(rows, queries), op(rows, queries))


def test_an_indexed_fill_of_a_0d_tensor_gives_eagers_value():
    """A 0-d tensor is indexed as one element along dim 0: the index guard and the importer
    divided by its zero dims."""
    x, index = torch.tensor(2.5), torch.tensor([0])
    op = lambda x, i: x.index_fill(0, i, -1.0)  # noqa: E731
    assert_same(compiled(op, x, index)(x, index), op(x, index))
