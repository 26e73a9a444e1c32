"""ONNX → Kiln IR: the real-architecture models shipped in the onnx wheel, PyTorch models exported
to ONNX (every Kiln pass applies), and clear errors for broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import kiln
from kiln.errors import FrontendError, UnsupportedOpError
from kiln.models import SmallCNN
from tests.conftest import assert_matches, eager

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem for p in LIGHT.glob("light_*.onnx"))


def test_the_nine_shipped_light_models_are_found():
    assert len(LIGHT_MODELS) == 9, LIGHT_MODELS


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_its_reference_output(name):
    compiled = kiln.compile(LIGHT / f"{name}.onnx", opt_level="O2")
    spec = compiled.signature.inputs[0]
    output = compiled(torch.randn(*spec.shape))  # the weights are constants: any input gives the reference
    output = output[0] if isinstance(output, (tuple, list)) else output
    reference = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"{name}_output_0.pb")))
    np.testing.assert_allclose(output.numpy(), reference, rtol=1e-3, atol=1e-7)  # the ONNX suite's tolerances


@pytest.fixture
def cnn_onnx(tmp_path):
    model, x = SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
    return model, x, path


def test_exported_pytorch_model_compiles_through_every_kiln_pass(cnn_onnx):
    model, x, path = cnn_onnx
    compiled = kiln.compile(str(path))
    assert_matches(compiled(x), (eager(model, x),))
    ran = [row.name for row in compiled.report.rows if row.stage == "kiln"]
    assert "fold_batch_norm" in ran and "cse" in ran  # the graph went through Kiln's pipeline


def test_truncated_file_is_named(cnn_onnx, tmp_path):
    _, _, path = cnn_onnx
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FrontendError, match="broken.onnx"):
        kiln.compile(broken)


def test_unknown_opset_is_named(cnn_onnx, tmp_path):
    _, _, path = cnn_onnx
    model = onnx.load(str(path))
    model.opset_import[0].version = 99
    with pytest.raises(FrontendError, match="opset 99"):
        kiln.compile(model)


def test_missing_initializer_is_named(cnn_onnx):
    _, _, path = cnn_onnx
    model = onnx.load(str(path))
    missing = model.graph.initializer[0].name
    del model.graph.initializer[0]
    with pytest.raises(FrontendError, match=f"reads '{missing}'.*missing initializer"):
        kiln.compile(model)


def test_unsupported_op_names_the_op_and_node():
    node = helper.make_node("Einsum", ["a", "b"], ["c"], name="the_einsum", equation="ij,jk->ik")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="ONNX Einsum.*the_einsum"):
        kiln.compile(model)


def test_symbolic_input_needs_input_shapes(cnn_onnx, tmp_path):
    model, x, path = cnn_onnx
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(FrontendError, match="input_shapes"):
        kiln.compile(proto)
    compiled = kiln.compile(proto, input_shapes={"image": [1, 3, 32, 32]})
    assert_matches(compiled(x), (eager(model, x),))


def _single_node_model(node, inputs, output_shape):
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, output_shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_argmax_select_last_index_picks_the_last_tie():
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0, select_last_index=1)
    x = torch.tensor([[2.0, 5.0, 5.0, 1.0], [7.0, 7.0, 0.0, 7.0]])
    compiled = kiln.compile(_single_node_model(node, [("x", [2, 4])], [2]), target="eager")
    assert compiled(x)[0].tolist() == [2, 3]


def test_ignored_attribute_is_an_error_not_wrong_numbers():
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])
    with pytest.raises(FrontendError, match="AveragePool.*dilations"):
        kiln.compile(_single_node_model(node, [("x", [1, 1, 6, 6])], [1, 1, 4, 4]))
