"""ATen arguments TVM's importer used to drop without a word: each gives eager's numbers now, or
is refused by name (kiln/backends/tvm/import_rewrites.py, kiln/ir/inference_only.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.testing.compare import disagreement
from tests.conftest import assert_matches


class Call(torch.nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, *inputs):
        return self.function(*inputs)


def compiled_matches(function, *inputs, tolerance: float = 1e-5) -> None:
    model = Call(function)
    compiled = kiln.compile(model, inputs, verify=False)  # the comparison here, not the gate's, is the test
    with torch.no_grad():
        expected = model(*inputs)
    assert disagreement(compiled(*inputs), expected, tolerance) is None


x, y = torch.randn(4, 8) * 3, torch.randn(4, 8)
ids = torch.randint(-5, 5, (4, 8))
MATCHING = {
    "add alpha": (lambda a, b: torch.add(a, b, alpha=2), x, y),
    "sub alpha": (lambda a, b: torch.sub(a, b, alpha=-0.5), x, y),
    "rsub alpha": (lambda a: torch.rsub(a, 3.0, alpha=2), x),
    "selu": (F.selu, x),
    "elu scaled": (lambda a: torch.ops.aten.elu(a, 0.7, 1.3, 0.5), x),
    "softmax to float64": (lambda a: torch.softmax(a, -1, dtype=torch.float64), x),
    "log_softmax to float64": (lambda a: torch.log_softmax(a, 0, dtype=torch.float64), x),
    "native_layer_norm statistics": (lambda a: torch.ops.aten.native_layer_norm(a, [8], None, None, 1e-5), x),
    "layer_norm without weight": (lambda a, b: F.layer_norm(a, [8], None, b[0]), x, y),
    "group_norm statistics": (lambda a: torch.ops.aten.native_group_norm(a, None, None, 4, 8, 1, 2, 1e-5), x),
    "batch norm from the batch": (lambda a: F.batch_norm(a, None, None, training=True), x),
    "instance norm from running statistics": (
        lambda a: F.instance_norm(a.reshape(1, 4, 8), torch.zeros(4), torch.ones(4) * 2, use_input_stats=False), x),
    "clamp_max by a number": (lambda a: torch.clamp_max(a, 0.5), x),
    "clamp_max by a tensor": (lambda a, b: torch.clamp_max(a, b), x, y),
    "clamp of integers": (lambda i: torch.clamp(i, -2, 3), ids),
    "true division of integers": (lambda i: i / 3, ids),
    "reciprocal of integers": (lambda i: torch.reciprocal(i), ids),
}


@pytest.mark.parametrize("name", MATCHING)
def test_an_argument_the_importer_dropped_now_gives_eagers_numbers(name):
    function, *inputs = MATCHING[name]
    compiled_matches(function, *inputs)


image = torch.randn(1, 3, 9, 9)
REFUSED = {
    "avg_pool2d divisor_override": (lambda a: F.avg_pool2d(a, 3, divisor_override=2), (image,), kiln.UnsupportedOpError,
                                    "divisor_override=2"),
    "antialiased interpolation": (lambda a: F.interpolate(a, size=(4, 4), mode="bilinear", antialias=True), (image,),
                                  kiln.UnsupportedOpError, "antialias"),
    "integer bilinear interpolation": (lambda a: F.interpolate(a, size=(18, 18), mode="bilinear"),
                                       ((image * 40).clamp(0, 255).to(torch.uint8),), kiln.UnsupportedOpError, "uint8 inputs"),
    "dropout in training": (lambda a: F.dropout(a, 0.5, training=True), (x,), kiln.FrontendError, "draws random numbers"),
    "randn_like": (lambda a: a + torch.randn_like(a), (x,), kiln.FrontendError, "draws random numbers"),
    "batch norm updating running statistics": (
        lambda a: F.batch_norm(a, torch.zeros(8), torch.ones(8), training=True), (x,), kiln.FrontendError, "that is training"),
    "scatter_reduce mean": (lambda a, i: torch.zeros(4, 8).scatter_reduce(0, i, a, "mean"),
                            (x, ids.abs() % 4), kiln.UnsupportedOpError, "reduce='mean'"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_what_no_rewrite_expresses_is_refused_by_name(name):
    function, inputs, error, words = REFUSED[name]
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        kiln.compile(Call(function), inputs)


def test_a_module_left_in_training_mode_is_refused_naming_it():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.2))
    with pytest.raises(kiln.FrontendError, match=r"training mode, where 1 \(BatchNorm2d.*2 \(Dropout.*model\.eval\(\)"):
        kiln.compile(model, (image,))
    assert model.training  # refused, and left as it was
    assert_matches(kiln.compile(model.eval(), (image,))(image), model(image))


def test_batch_norm_without_running_statistics_compiles_in_eval_mode():
    """BatchNorm with track_running_stats=False normalizes by the batch in eval mode too: inference."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert_matches(kiln.compile(model, (image,))(image), model(image))
