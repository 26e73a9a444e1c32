"""Low-rank rewrites: SVD of linear layers and Tucker-2 of convolutions, the saving and the error
they report, distillation to win the accuracy back (digits MLP, also imported from ONNX), and the
real MiniLM encoder's embedding cosine at two ranks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln
from kiln.errors import PassError
from kiln.ir import from_torch
from kiln.ir.stats import op_name
from kiln.passes import get_pass
from tests import minilm
from tests.conftest import assert_matches
from tests.digits import DigitsMLP, accuracy, batches, load_digits, train
from tests.passes.helpers import run_pass


def _params(compiled) -> tuple[int, int]:
    rows = [row for row in compiled.report.rows if row.stage == "kiln"]
    return rows[0].stats.params, rows[-1].stats.params


def test_svd_of_linear_layers_halves_the_mlp_and_distillation_recovers_digits_accuracy():
    digits = load_digits()
    model = train(DigitsMLP(), digits)
    baseline = accuracy(model, digits)
    factorized = kiln.compile(model, (digits.test_x,), low_rank=kiln.LowRank(ratio=0.3), target="eager")
    before, after = _params(factorized)
    assert after <= 0.5 * before, f"params {before:,} → {after:,}"
    layers = next(row for row in factorized.report.rows if row.name == "low_rank").layers
    assert len(layers) == 3 and all("error" in line for line in layers.values())
    student = kiln.distill(model, factorized.graph.module, batches(digits), epochs=10, lr=1e-3, verbose=False)
    compiled = kiln.compile(student, (digits.test_x,))  # for llvm
    with torch.no_grad():
        assert_matches(compiled(digits.test_x), student(digits.test_x))
    recovered = accuracy(compiled, digits)
    assert recovered >= baseline - 1.0, f"low-rank + distilled {recovered:.2f}% vs original {baseline:.2f}%"


def test_tucker_of_a_convolution_is_three_convolutions_with_the_reported_error():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 96, 3, stride=2, padding=1).eval()
    x = torch.randn(2, 64, 16, 16)
    result = get_pass("low_rank")(from_torch(conv, (x,)), ratio=0.4)
    squeeze, core, expand = [n for n in result.graph.nodes if op_name(n) == "aten.conv2d"]
    factors = [result.graph.constant(n.args[1]).detach().double() for n in (squeeze, core, expand)]
    assert factors[1].shape[2:] == (3, 3) and factors[0].shape[2:] == factors[2].shape[2:] == (1, 1)
    # the three convolutions are one convolution by the reconstructed kernel Ŵ ...
    kernel = torch.einsum("oikl,Oo,iI->OIkl", factors[1], factors[2][:, :, 0, 0], factors[0][:, :, 0, 0])
    with torch.no_grad():
        (got,) = result.graph.run(x)
        assert_matches(got, nn.functional.conv2d(x, kernel.float(), conv.bias, stride=2, padding=1))
    # ... whose error is the one reported, and whose parameters are within the ratio
    (line,) = result.layers.values()
    reported = float(line.rsplit("error ", 1)[1].rstrip("%")) / 100
    actual = ((kernel - conv.weight.double()).norm() / conv.weight.double().norm()).item()
    assert abs(reported - actual) < 1e-3
    assert sum(f.numel() for f in factors) <= 0.4 * conv.weight.numel()


def test_layers_that_would_not_get_cheaper_are_left_alone_and_bad_options_fail():
    model = nn.Sequential(nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 256)).eval()
    _, result = run_pass("low_rank", model, torch.randn(4, 256), energy=0.99)
    assert result.changes == 0
    with pytest.raises(PassError, match="ratio"):
        kiln.compile(model, (torch.randn(4, 256),), low_rank=kiln.LowRank(ratio=1.5), target="eager")


def test_onnx_imported_mlp_is_factorized_and_distilled(tmp_path):
    digits = load_digits()
    model = train(DigitsMLP(), digits, epochs=4)
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(model, (digits.test_x[:2],), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}})
    factorized = kiln.compile(path, input_shapes={"image": list(digits.test_x.shape)}, dynamic_batch=True,
                              low_rank=kiln.LowRank(ratio=0.3), target="eager")
    before, after = _params(factorized)
    assert after <= 0.5 * before
    student = kiln.distill(model, factorized.graph.module, batches(digits), epochs=4, verbose=False)
    assert accuracy(student, digits) >= accuracy(model, digits) - 3.0


@pytest.fixture(scope="module")
def encoded():
    return minilm.encoded()


def test_minilm_embedding_cosine_is_reported_at_two_ranks(encoded):
    encoder, inputs, reference = encoded
    graph = from_torch(encoder, inputs)  # captured once, factorized at two ranks
    figures = {}
    for energy in (0.95, 0.9):
        factorized = get_pass("dce")(get_pass("low_rank")(graph, energy=energy).graph).graph
        before, after = graph.stats().params, factorized.stats().params
        cosine, agreement = minilm.agreement(factorized.run(*inputs)[0], reference)
        figures[energy] = (after / before, cosine, agreement)
        print(f"MiniLM low-rank, energy {energy}: params {after / before:.2f}×, cosine {cosine:.4f}, retrieval agreement {agreement:.1%}")
    assert figures[0.9][0] < figures[0.95][0] < 1.0  # less energy kept, fewer parameters
    assert figures[0.95][1] > figures[0.9][1] > 0.5  # and the embeddings move further
