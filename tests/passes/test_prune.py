"""Structured channel pruning on the IR, with distillation: real data (the digits CNN), residual
and depthwise architectures, alignment to the vector width, and the numbers of what it saved."""

from __future__ import annotations

import pytest
import torch

import kiln
from kiln import models
from kiln.errors import PassError
from kiln.ir.stats import op_name
from tests.conftest import assert_matches
from tests.digits import DigitsCNN, DigitsMLP, accuracy, batches, load_digits, train


def _stats_around(compiled, name: str):
    rows = [row for row in compiled.report.rows if row.stage == "kiln"]
    index = next(i for i, row in enumerate(rows) if row.name == name)
    return rows[index - 1].stats, rows[-1].stats


def test_half_the_channels_and_distillation_keep_digits_accuracy_at_under_a_third_of_the_flops():
    digits = load_digits()
    model = train(DigitsCNN(), digits)
    baseline = accuracy(model, digits)
    pruned = kiln.compile(model, (digits.test_x,), prune=kiln.Prune(ratio=0.5), target="eager")
    before, after = _stats_around(pruned, "prune_channels")
    assert after.flops <= 0.3 * before.flops, f"FLOPs {before.flops} → {after.flops}"
    batches = [(digits.train_x[i: i + 64], digits.train_y[i: i + 64]) for i in range(0, len(digits.train_y), 64)]
    student = kiln.distill(model, pruned.graph.module, batches, epochs=15, lr=2e-3, verbose=False)
    compiled = kiln.compile(student, (digits.test_x,))  # the distilled IR, compiled for llvm
    with torch.no_grad():
        assert_matches(compiled(digits.test_x), student(digits.test_x))
    recovered = accuracy(compiled, digits)
    assert recovered >= baseline - 1.0, f"pruned + distilled {recovered:.2f}% vs unpruned {baseline:.2f}%"


@pytest.mark.parametrize("build", [models.resnet18, models.mobilenet_v2], ids=["resnet18", "mobilenet_v2"])
def test_residual_and_depthwise_networks_keep_consistent_shapes(build):
    model, x = build().eval(), torch.randn(1, 3, 64, 64)
    pruned = kiln.compile(model, (x,), prune=kiln.Prune(ratio=0.5), target="eager")
    before, after = _stats_around(pruned, "prune_channels")
    assert after.params < 0.4 * before.params and after.flops < 0.4 * before.flops
    assert pruned(x).shape == (1, 1000)  # the classifier's outputs are never pruned
    for node in pruned.graph.nodes:
        if op_name(node) == "aten.conv2d" and node.args[0].meta["val"].shape[1] > 3:
            channels = node.meta["val"].shape[1]
            assert channels % 8 == 0, f"{node.name}: {channels} channels, not a multiple of the vector width"


def test_pruned_model_compiles_for_llvm_and_matches_its_own_ir():
    model, x = models.mobilenet_v2().eval(), torch.randn(1, 3, 32, 32)
    compiled = kiln.compile(model, (x,), prune=kiln.Prune(ratio=0.3))
    with torch.no_grad():
        (own_ir,) = compiled.graph.run(x)  # the pruned IR executed by PyTorch
    assert_matches(compiled(x), own_ir)


def test_alignment_override_and_ratio_errors():
    model, x = DigitsCNN().eval(), torch.randn(2, 1, 8, 8)
    odd = kiln.compile(model, (x,), prune=kiln.Prune(ratio=0.3, align=1), target="eager")
    assert {node.meta["val"].shape[1] for node in odd.graph.nodes if op_name(node) == "aten.conv2d"} == {22, 45}
    with pytest.raises(PassError, match="ratio"):
        kiln.compile(model, (x,), prune=kiln.Prune(ratio=1.5), target="eager")


def test_onnx_imported_model_is_pruned_like_a_pytorch_one(tmp_path):
    model, x = DigitsCNN().eval(), torch.randn(2, 1, 8, 8)
    path = tmp_path / "digits.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
    pruned = kiln.compile(path, prune=kiln.Prune(ratio=0.5), target="eager")
    before, after = _stats_around(pruned, "prune_channels")
    convolutions = [n.meta["val"].shape[1] for n in pruned.graph.nodes if op_name(n) == "aten.conv2d"]
    assert convolutions == [16, 32, 32] and after.flops < 0.4 * before.flops
    assert pruned(x)[0].shape == (2, 10)


def _first_conv_rows_kept(compiled, model) -> list[int]:
    """Which output channels of the first convolution survived (its weight rows, found in the original)."""
    conv = next(n for n in compiled.graph.nodes if op_name(n) == "aten.conv2d")
    pruned = compiled.graph.constant(conv.args[1]).detach()
    original = model.features[0].weight.detach()
    return [int((original - row).abs().flatten(1).sum(1).argmin()) for row in pruned]


def test_batch_norm_scale_and_taylor_criteria_rank_channels_by_what_they_measure():
    digits = load_digits()
    model = DigitsCNN().eval()
    with torch.no_grad():
        model.features[1].weight[:16] = 0.01  # batch-norm scales: the first 16 channels barely pass
        scaled = kiln.compile(model, (digits.test_x,), passes=[], prune=kiln.Prune(0.5, align=1, criterion="bn_scale"), target="eager")
        assert _first_conv_rows_kept(scaled, model) == list(range(16, 32))
        model.features[1].weight[:16] = 1.0
        model.features[0].weight[:16] *= 10  # large filters (L1 keeps them) ...
        model.features[3].weight[:, :16] = 0  # ... that nothing downstream reads (Taylor drops them)
    by_l1 = kiln.compile(model, (digits.test_x,), passes=[], prune=kiln.Prune(0.5, align=1), target="eager")
    by_taylor = kiln.compile(model, (digits.test_x,), passes=[], prune=kiln.Prune(0.5, align=1, criterion="taylor"),
                             calibration=batches(digits)[:4], target="eager")
    assert _first_conv_rows_kept(by_l1, model) == list(range(16))
    assert _first_conv_rows_kept(by_taylor, model) == list(range(16, 32))
    with pytest.raises(PassError, match="taylor.*needs data"):
        kiln.compile(model, (digits.test_x,), prune=kiln.Prune(0.5, criterion="taylor"), target="eager")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_pruning_zeroes_the_smallest_weights_and_shrinks_the_artifact(scope, tmp_path):
    digits = load_digits()
    torch.manual_seed(0)
    model = train(DigitsMLP(), digits, epochs=3)
    sparse = kiln.compile(model, (digits.test_x,), prune=kiln.Prune(0.7, structured=False, scope=scope))
    row = next(row for row in sparse.report.rows if row.name == "prune_magnitude")
    assert "compression only" in row.note and len(row.layers) == 3
    weights = [sparse.graph.constant(n.args[1]) for n in sparse.graph.nodes if op_name(n) == "aten.linear"]
    zero = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(zero - 0.7) < 0.01
    if scope == "layer":
        assert all(abs((w == 0).float().mean().item() - 0.7) < 0.01 for w in weights)
    assert accuracy(sparse, digits) >= accuracy(model, digits) - 3.0  # 70% of the weights gone, little accuracy
    dense = kiln.compile(model, (digits.test_x,))
    dense.save(tmp_path / "dense.kiln")
    sparse.save(tmp_path / "sparse.kiln")
    assert (tmp_path / "sparse.kiln").stat().st_size < 0.7 * (tmp_path / "dense.kiln").stat().st_size
