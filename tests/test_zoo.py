"""Every model of the zoo compiled for the host CPU matches eager PyTorch (fp32 tolerance)."""

import pytest
import torch

import kiln
from kiln.models import ZOO
from tests.conftest import assert_matches, eager


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ZOO)
def test_llvm_matches_eager(name, threads):
    model, inputs = ZOO[name]()
    compiled = kiln.compile(model, inputs, target="llvm", threads=threads)
    assert_matches(compiled(*inputs), eager(model, *inputs))
    # the compiled module, not PyTorch, produced the numbers
    assert any(row.name == "codegen" for row in compiled.report.rows)


def test_multi_output_keeps_structure():
    model, (image, text) = ZOO["multi_input_output"]()
    compiled = kiln.compile(model, (image, text))
    out = compiled(image, text)
    assert set(out) == {"logits", "score"} and out["logits"].shape == (2, 5)


@pytest.mark.parametrize("name", ["cnn_batch_norm", "transformer_encoder"])
def test_dynamic_batch_compiles_once_runs_batch_1_and_8(name):
    model, inputs = ZOO[name]()
    compiled = kiln.compile(model, inputs, dynamic_batch=True)
    assert compiled.signature.inputs[0].shape[0] == "batch"
    for batch in (1, 8):
        x = inputs[0][:1].expand(batch, *inputs[0].shape[1:]).clone()
        if x.dtype.is_floating_point:
            x = torch.randn_like(x)
        assert_matches(compiled(x), eager(model, x))


def test_numpy_inputs_are_accepted():
    model, (x,) = ZOO["mlp"]()
    compiled = kiln.compile(model, (x,))
    assert_matches(compiled(x.numpy()), eager(model, x))


def test_eager_target_runs_the_optimized_graph():
    model, inputs = ZOO["cnn_batch_norm"]()
    compiled = kiln.compile(model, inputs, target="eager")
    assert_matches(compiled(*inputs), eager(model, *inputs))
    last = compiled.report.rows[-1]
    assert (last.stage, last.name) == ("eager", "build")  # the backend's one step: PyTorch runs the graph as it is
