"""Kiln IR → ONNX: export after the passes, the round trip back into Kiln, the onnxruntime
target, and `kiln compile --emit onnx`."""

from __future__ import annotations

import onnx
import pytest
import torch

import kiln
from kiln.models import SmallCNN, TwoHeads
from tests.conftest import assert_matches, eager


@pytest.fixture
def cnn():
    return SmallCNN().eval(), torch.randn(1, 3, 32, 32)


def test_round_trip_pytorch_kiln_onnx_kiln(cnn, tmp_path):
    model, x = cnn
    path = kiln.compile(model, (x,)).export_onnx(tmp_path / "cnn.onnx")
    onnx.checker.check_model(str(path))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops  # exported after Kiln folded batch norm into the convolutions
    assert_matches(kiln.compile(path)(x), (eager(model, x),))


def test_onnx_input_names_become_the_compiled_modules_inputs(cnn, tmp_path):
    model, x = cnn
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
    assert [spec.name for spec in kiln.compile(path).signature.inputs] == ["image"]


def test_onnxruntime_target_matches_eager_and_saves(tmp_path):
    model = TwoHeads().eval()
    inputs = (torch.randn(2, 3, 16, 16), torch.randn(2, 24))
    compiled = kiln.compile(model, inputs, target="onnxruntime")
    assert_matches(compiled(*inputs), eager(model, *inputs))
    compiled.save(tmp_path / "two_heads.kiln")
    assert_matches(kiln.load(tmp_path / "two_heads.kiln")(*inputs), eager(model, *inputs))


def test_cli_compile_emits_onnx(cnn, tmp_path):
    from kiln.cli import main

    model, x = cnn
    source = tmp_path / "cnn.onnx"
    torch.onnx.export(model, (x,), str(source), dynamo=False, opset_version=17)
    assert main(["compile", str(source), "--emit", "onnx", "-o", str(tmp_path / "optimized.onnx")]) == 0
    assert_matches(kiln.compile(tmp_path / "optimized.onnx")(x), (eager(model, x),))
    assert main(["compile", str(source), "-o", str(tmp_path / "cnn.kiln")]) == 0
    assert_matches(kiln.load(tmp_path / "cnn.kiln")(x), (eager(model, x),))


@pytest.mark.parametrize("mode", ["int8", "dynamic_int8", "weight_int4"])
def test_quantized_graphs_export_as_qdq_and_run_in_onnx_runtime(mode, tmp_path):
    import onnxruntime

    from tests.digits import DigitsCNN

    torch.manual_seed(0)
    model, x = DigitsCNN(channels=8).eval(), torch.rand(4, 1, 8, 8)
    compiled = kiln.compile(model, (x,), target="eager", quantize=mode, calibration=[(torch.rand(16, 1, 8, 8),)])
    path = compiled.export_onnx(tmp_path / f"{mode}.onnx")
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    if mode == "int8":  # standard QDQ: what ONNX Runtime fuses into QLinearConv / QGemm
        # five layers, and the uint8 max-pool between two of them as DequantizeLinear → MaxPool → QuantizeLinear
        assert ops.count("QuantizeLinear") == 5 + 1 and ops.count("DequantizeLinear") == 2 * 5 + 1
        assert ops.count("Conv") == 3 and "Cast" not in ops
    with torch.no_grad():
        (own_ir,) = compiled.graph.run(x)
        fp32 = model(x)
    outputs = {}
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs[level] = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    # executed as written, the ONNX graph computes exactly what Kiln's quantized IR computes ...
    assert_matches(outputs["ORT_DISABLE_ALL"], own_ir)
    # ... and ONNX Runtime's own integer fusions of it stay close to fp32
    cosine = torch.nn.functional.cosine_similarity(outputs["ORT_ENABLE_ALL"].flatten(), fp32.flatten(), dim=0).item()
    assert cosine > 0.99, f"ONNX Runtime (optimized) cosine to fp32 {cosine:.4f}"
