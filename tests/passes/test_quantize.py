"""Static int8: accuracy on real data (scikit-learn's digits, a CNN trained here), the structure of
the quantized IR, integer compute in the compiled module, and clear errors."""

from __future__ import annotations

import pytest
import torch
from tvm.target import Target

import kiln
from kiln.backends.targets import resolve_target
from kiln.backends.tvm.cpu.dot_instructions import integer_dots
from kiln.errors import PassError
from kiln.ir.stats import op_name
from tests.conftest import assert_matches
from tests.digits import DigitsCNN, accuracy, load_digits, train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def digits_cnn(digits):
    return train(DigitsCNN(), digits)


def _calibration(digits, batches: int = 8):
    return [(digits.train_x[i: i + 64],) for i in range(0, 64 * batches, 64)]


def test_static_int8_keeps_digits_accuracy_within_half_a_point(digits, digits_cnn):
    fp32 = accuracy(digits_cnn, digits)
    compiled = kiln.compile(digits_cnn, (digits.test_x,), quantize="int8", calibration=_calibration(digits))
    int8 = accuracy(compiled, digits)
    assert fp32 > 95.0, f"the fp32 model itself is poor ({fp32:.1f}%)"
    assert abs(int8 - fp32) <= 0.5, f"int8 {int8:.2f}% vs fp32 {fp32:.2f}%"


def test_static_int8_on_arm_dotprod_keeps_digits_accuracy(digits, digits_cnn, aarch64_board):
    """The same budget on the Raspberry Pi 5's sdot kernels, run on the emulated aarch64 board."""
    fp32 = accuracy(digits_cnn, digits)
    compiled = kiln.compile(digits_cnn, (digits.test_x,), quantize="int8", calibration=_calibration(digits), target="rpi5")
    assert "sdot" in next(row.note for row in compiled.report.rows if row.name == "ScheduleCPU")
    int8 = accuracy(compiled.to_remote(aarch64_board.address), digits)
    assert abs(int8 - fp32) <= 0.5, f"int8 on sdot {int8:.2f}% vs fp32 {fp32:.2f}%"


def test_quantized_ir_has_integer_layers_and_a_quarter_of_the_weight_bytes(digits, digits_cnn):
    compiled = kiln.compile(digits_cnn, (digits.test_x[:8],), quantize="int8", calibration=_calibration(digits, 2))
    ops = [op_name(n) for n in compiled.graph.nodes if n.op == "call_function"]
    assert ops.count("kiln.qconv2d") == 3 and ops.count("kiln.qlinear") == 2
    assert "aten.conv2d" not in ops and "aten.linear" not in ops
    rows = [row for row in compiled.report.rows if row.stage == "kiln"]
    quantized = next(i for i, row in enumerate(rows) if row.name == "quantize_int8")
    assert rows[quantized].changes == 5
    before, after = rows[quantized - 1].stats.param_bytes, rows[-1].stats.param_bytes
    assert after <= 0.3 * before, f"weights {before} → {after} bytes"  # int8 weights, fp32 scales and biases


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_every_calibration_method_agrees_with_fp32(digits, digits_cnn, method):
    x = digits.test_x[:64]
    compiled = kiln.compile(digits_cnn, (x,), quantize=kiln.Quantize(method=method), calibration=_calibration(digits, 4))
    with torch.no_grad():
        reference = digits_cnn(x)
    cosine = torch.nn.functional.cosine_similarity(compiled(x).flatten(), reference.flatten(), dim=0).item()
    assert cosine > 0.999, f"{method}: cosine {cosine:.5f}"


def test_compiled_module_computes_in_integers(digits, digits_cnn, tmp_path):
    kiln.compile(digits_cnn, (digits.test_x[:8],), quantize="int8", calibration=_calibration(digits, 2), debug_dir=tmp_path)
    imported = next(tmp_path.glob("*tvm_import.py")).read_text()
    # uint8 activations (less their zero point as int16, the uint8 underneath for VNNI) × int8
    # weights accumulating in int32, in TVM's own IR (not float emulation)
    assert imported.count('out_dtype="int32"') == 5
    assert 'R.Tensor((8, 1, 8, 8), dtype="uint8")' in imported and 'R.Tensor((8, 1, 8, 8), dtype="int16")' in imported
    assert 'dtype="int8"' in imported
    dots = integer_dots(Target(resolve_target("llvm").tvm_target))
    if dots:  # the layers are the CPU's dot-product kernels
        scheduled = next(tmp_path.glob("*ScheduleCPU.py")).read_text()
        assert sum(scheduled.count(dot.llvm_intrinsic) for dot in dots) >= 3


def test_kept_layer_stays_float(digits, digits_cnn):
    x = digits.test_x[:8]
    plain = kiln.compile(digits_cnn, (x,), target="eager", quantize="int8", calibration=_calibration(digits, 2))
    first = next(n.name for n in kiln.compile(digits_cnn, (x,), target="eager").graph.nodes if op_name(n) == "aten.conv2d")
    kept = kiln.compile(digits_cnn, (x,), target="eager", quantize=kiln.Quantize(keep_float=(first,)), calibration=_calibration(digits, 2))
    count = lambda c, name: sum(op_name(n) == name for n in c.graph.nodes)
    assert count(plain, "kiln.qconv2d") == 3 and count(kept, "kiln.qconv2d") == 2 and count(kept, "aten.conv2d") == 1


def test_missing_calibration_data_is_a_clear_error(digits_cnn):
    with pytest.raises(PassError, match="calibration data"):
        kiln.compile(digits_cnn, (torch.randn(2, 1, 8, 8),), quantize="int8")


def test_unknown_mode_and_method_are_named(digits, digits_cnn):
    with pytest.raises(PassError, match="int4"):
        kiln.compile(digits_cnn, (torch.randn(2, 1, 8, 8),), quantize="int4", calibration=_calibration(digits, 1))
    with pytest.raises(PassError, match="entropy"):
        kiln.compile(digits_cnn, (torch.randn(2, 1, 8, 8),), quantize=kiln.Quantize(method="entropy"), calibration=_calibration(digits, 1))


def test_sensitivity_report_keeps_the_most_sensitive_layers_float_to_meet_the_budget(digits, digits_cnn):
    x = digits.test_x[:64]
    with torch.no_grad():
        reference = digits_cnn(x)

    def fidelity(predict) -> float:  # a continuous score: cosine of the logits to fp32, in percent
        return 100 * torch.nn.functional.cosine_similarity(predict(x).flatten(), reference.flatten(), dim=0).item()

    def quantized_with(budget: float):
        config = kiln.Quantize(evaluate=fidelity, max_accuracy_drop=budget)
        compiled = kiln.compile(digits_cnn, (x,), target="eager", quantize=config, calibration=_calibration(digits, 2))
        return compiled, next(row for row in compiled.report.rows if row.name == "quantize_int8")

    _, loose = quantized_with(5.0)
    assert loose.changes == 5 and "0 kept float" in loose.note and "within the budget" in loose.note
    sensitivity = {name: float(line.split()[1]) for name, line in loose.layers.items()}
    strict_budget = (100 - fidelity(quantized_with(5.0)[0])) / 4  # a quarter of the all-int8 drop
    compiled, strict = quantized_with(strict_budget)
    kept = [name for name, line in strict.layers.items() if line.endswith("kept float")]
    assert kept and "within the budget" in strict.note, strict.note
    quantized = set(sensitivity) - set(kept)
    assert min(sensitivity[name] for name in kept) >= max(sensitivity[name] for name in quantized)  # the most sensitive went
    assert 100 - fidelity(compiled) <= strict_budget


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_compiles_to_integer_weights(bits, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 64), torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).eval()
    x = torch.randint(0, 50, (3, 5))
    compiled = kiln.compile(model, (x,), quantize=f"weight_int{bits}", debug_dir=tmp_path)
    weights = [compiled.graph.constant(n.args[1]) for n in compiled.graph.nodes if op_name(n) == "kiln.linear_weight_only"]
    expected = [(128, 64), (32, 128)] if bits == 8 else [(128, 32), (32, 64)]  # int4: two per byte
    assert [(w.dtype, tuple(w.shape)) for w in weights] == [(torch.int8 if bits == 8 else torch.uint8, s) for s in expected]
    assert sum(op_name(n) == "kiln.embedding_weight_only" for n in compiled.graph.nodes) == 1
    with torch.no_grad():
        (own_ir,) = compiled.graph.run(x)
        cosine = torch.nn.functional.cosine_similarity(own_ir.flatten(), model(x).flatten(), dim=0).item()
    assert_matches(compiled(x), own_ir)
    assert cosine > 0.99
    # the scheduled module still reads the integer bytes: nothing folded them back into float constants
    assert ('"int8")' if bits == 8 else '"uint8")') in next(tmp_path.glob("*tvm_ScheduleCPU.py")).read_text()


def test_quantization_aware_distillation_trains_through_int8_rounding_and_then_quantizes(digits, digits_cnn):
    from tests.digits import batches

    float_ir = kiln.compile(digits_cnn, (digits.test_x,), target="eager").graph.module
    student = kiln.distill(digits_cnn, float_ir, batches(digits), epochs=2, lr=2e-4, fake_quant=True, verbose=False)
    nodes = [str(n.target) for n in student.module.graph.nodes]
    assert not any("fake_quant" in n for n in nodes)  # the fake quantization came out after training
    original = dict(float_ir.state_dict())
    changed = [name for name, p in student.module.named_parameters() if not torch.equal(p, original[name])]
    assert changed  # and training moved the weights
    quantized = kiln.compile(student, (digits.test_x,), quantize="int8", calibration=_calibration(digits))
    assert accuracy(quantized, digits) >= accuracy(digits_cnn, digits) - 0.5
