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


def _with_logits_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model with the input of its last Softmax as its last output: with constant weights the
    softmax output is nearly uniform, the logits before it are what prove the numerics. A model
    without a Softmax (densenet121) already ends in its logits."""
    softmaxes = [node for node in model.graph.node if node.op_type == "Softmax"]
    if not softmaxes:
        return model, model.graph.output[-1].name
    model.graph.output.append(helper.make_tensor_value_info(softmaxes[-1].input[0], onnx.TensorProto.FLOAT, None))
    return model, softmaxes[-1].input[0]


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_its_reference_output_and_onnxruntime_before_softmax(name):
    import onnxruntime

    model, logits = _with_logits_output(onnx.load(str(LIGHT / f"{name}.onnx")))
    compiled = kiln.compile(model, opt_level="O2")
    spec = compiled.signature.inputs[0]
    x = torch.randn(*spec.shape)
    outputs = compiled(x)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    reference = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"{name}_output_0.pb")))
    np.testing.assert_allclose(outputs[0].numpy(), reference, rtol=1e-3, atol=1e-7)  # the ONNX suite's tolerances
    initializers = {t.name for t in model.graph.initializer}
    input_name = next(i.name for i in model.graph.input if i.name not in initializers)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ort_logits,) = session.run([logits], {input_name: x.numpy()})
    scale = np.abs(ort_logits).max()
    np.testing.assert_allclose(outputs[-1].numpy(), ort_logits, rtol=1e-3, atol=1e-4 * scale)


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
    node = helper.make_node("Unique", ["a"], ["c"], name="the_unique")  # its output size depends on the data
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="ONNX Unique.*the_unique"):
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
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], output_shape=[7, 7])
    model = _single_node_model(node, [("x", [1, 1, 3, 3]), ("w", [1, 1, 3, 3])], [1, 1, 7, 7])
    with pytest.raises(FrontendError, match="ConvTranspose.*output_shape"):
        kiln.compile(model)


# One or more cases of ONNX's node suite per converter family, run through Kiln's backend
# interface against the suite's expected outputs (benchmarks/onnx_conformance.py runs all of them).
NODE_CASES = [
    "test_resize_downsample_scales_cubic_antialias", "test_resize_tf_crop_and_resize", "test_resize_upsample_sizes_nearest_floor_align_corners",
    "test_attention_4d_gqa_causal", "test_attention_3d_with_past_and_present_qk_matmul_softcap", "test_rotary_embedding_interleaved",
    "test_gridsample_bicubic", "test_scatternd_max", "test_scatter_elements_with_negative_indices", "test_gather_elements_negative_indices",
    "test_qlinearconv", "test_qlinearmatmul_3D_int8_float32", "test_dynamicquantizelinear", "test_quantizelinear_blocked_asymmetric",
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True", "test_maxpool_2d_pads", "test_lppool_2d_dilations",
    "test_layer_normalization_4d_axis0", "test_rms_normalization_3d_axis1_epsilon", "test_group_normalization_example",
    "test_sce_mean_weight_ii_4d_log_prob", "test_nllloss_NCd1d2_with_weight_reduction_sum_ii", "test_reduce_log_sum_exp_keepdims_random",
    "test_slice_neg_steps", "test_center_crop_pad_crop_and_pad", "test_cumsum_2d_negative_axis", "test_tril_out_neg",
    "test_mod_mixed_sign_float32", "test_onehot_negative_indices", "test_depthtospace_crd_mode_example", "test_einsum_batch_matmul",
    "test_reduce_sum_keepdims_random", "test_clip_default_inbounds", "test_if", "test_affine_grid_2d_align_corners_expanded",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2", "test_quantizelinear_int4", "test_castlike_INT4_to_INT8", "test_dequantizelinear_uint4",
    "test_quantizelinear_e4m3fn", "test_bitshift_right_int8_negative_input", "test_reduce_prod_keepdims_random",
    "test_top_k_smallest", "test_lstm_with_peepholes", "test_gru_bidirectional", "test_simple_rnn_batchwise",
    "test_hannwindow", "test_attention_local_window", "test_attention_4d_causal_nonpad_batch_prefill",
    "test_linear_attention_gated_delta_gqa", "test_causal_conv_with_state_decode_step", "test_swiglu", "test_tensorscatter_circular",
    "test_scan9_sum", "test_compress_0", "test_reversesequence_batch", "test_col2im_pads", "test_pow_types_int32_int32",
    "test_clip_default_int8_min", "test_reduce_max_bool_inputs", "test_loop11", "test_batchnorm_example_training_mode",
    "test_maxpool_with_argmax_2d_precomputed_strides", "test_reduce_max_empty_set", "test_split_zero_size_splits_opset18",
    "test_tril_zero", "test_convtranspose_3d", "test_attention_4d_causal_fp16",
]
# Half-precision cases whose expected outputs round every partial sum to the half type (numpy's
# order): Kiln accumulates in float32 and must land at least as close to the exact result.
HALF_PRECISION_CASES = ["test_attention_4d_causal_bf16", "test_attention_3d_causal_bf16_expanded"]


@pytest.fixture(scope="module")
def node_cases():
    from onnx.backend.test.case.node import collect_testcases

    return {case.name: case for case in collect_testcases(None) if case.name in NODE_CASES + HALF_PRECISION_CASES}


@pytest.mark.parametrize("name", NODE_CASES)
def test_onnx_node_case_matches_its_expected_output(name, node_cases):
    from kiln.testing.onnx_backend import KilnBackend

    case = node_cases[name]
    for inputs, expected in case.data_sets:
        inputs = [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in inputs]
        outputs = KilnBackend.run_model(case.model, inputs)
        for got, want in zip(outputs, expected):
            want = numpy_helper.to_array(want) if isinstance(want, onnx.TensorProto) else np.asarray(want)
            assert got.shape == want.shape and got.dtype == want.dtype  # float8/int4 outputs come back as such
            if want.dtype.name.startswith(("float8", "float4", "int4", "uint4")):
                got, want = got.astype(np.float32), want.astype(np.float32)
            np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)


@pytest.mark.parametrize("name", HALF_PRECISION_CASES)
def test_half_precision_attention_is_closer_to_exact_than_the_suites_outputs(name, node_cases):
    from benchmarks.onnx_conformance import half_precision_errors
    from kiln.testing.onnx_backend import KilnBackend

    case = node_cases[name]
    (inputs, expected), = case.data_sets
    outputs = KilnBackend.run_model(case.model, inputs)
    kiln_error, expected_error = half_precision_errors(case, inputs, outputs, expected)
    assert kiln_error <= expected_error
    assert kiln_error < 4e-3  # bfloat16's ulp at 0.5–1, where these outputs lie, is 3.9e-3
