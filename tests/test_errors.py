"""Bad input gets a clear Kiln error naming the problem."""

import pytest
import torch

import kiln
from kiln import models


class Digamma(torch.nn.Module):
    def forward(self, x):
        y = torch.relu(x)
        return torch.special.digamma(y + 1)  # TVM has no digamma


def test_unsupported_op_names_op_and_model_line():
    with pytest.raises(kiln.UnsupportedOpError) as caught:
        kiln.compile(Digamma(), (torch.rand(4, 8),))
    message = str(caught.value)
    assert "aten.digamma" in message
    assert "test_errors.py" in message and "torch.special.digamma(y + 1)" in message


@pytest.fixture(scope="module")
def mlp_module():
    return kiln.compile(models.MLP().eval(), (torch.randn(4, 64),))


def test_wrong_shape_says_expected_and_got(mlp_module):
    with pytest.raises(kiln.InputMismatchError, match=r"expected shape \(4, 64\), got \(4, 63\)"):
        mlp_module(torch.randn(4, 63))


def test_wrong_dtype(mlp_module):
    with pytest.raises(kiln.InputMismatchError, match="expected dtype torch.float32, got torch.float64"):
        mlp_module(torch.randn(4, 64, dtype=torch.float64))


def test_wrong_input_count(mlp_module):
    with pytest.raises(kiln.InputMismatchError, match=r"expected 1 input\(s\).*got 2"):
        mlp_module(torch.randn(4, 64), torch.randn(4, 64))


def test_non_tensor_input(mlp_module):
    with pytest.raises(kiln.InputMismatchError, match="expected a tensor"):
        mlp_module(3.0)


def test_dynamic_batch_must_agree_across_inputs():
    compiled = kiln.compile(models.TwoHeads(), (torch.randn(2, 3, 16, 16), torch.randn(2, 24)), dynamic_batch=True)
    with pytest.raises(kiln.InputMismatchError, match="dimension 'batch' is 3"):
        compiled(torch.randn(2, 3, 16, 16), torch.randn(3, 24))


def test_unknown_target_and_cli_strings_are_rejected():
    with pytest.raises(kiln.TargetError, match="unknown target 'tpu'"):
        kiln.compile(models.MLP().eval(), (torch.randn(1, 64),), target="tpu")
    with pytest.raises(kiln.TargetError, match="not TVM command-line strings"):
        kiln.compile(models.MLP().eval(), (torch.randn(1, 64),), target="llvm -mcpu=znver3")


def test_unknown_pass_lists_known_ones():
    with pytest.raises(kiln.PassError, match="unknown pass 'fold_everything'.*fold_batch_norm"):
        kiln.compile(models.MLP().eval(), (torch.randn(1, 64),), passes=["fold_everything"])


def test_max_pool_indices_are_refused_not_zeros():
    # TVM's importer returns zeros for max-pool indices; Kiln refuses them by name instead
    class PoolWithIndices(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.max_pool2d(x, 2, return_indices=True)[1]

    with pytest.raises(kiln.errors.UnsupportedOpError, match="max_pool2d_with_indices.*indices output"):
        kiln.compile(PoolWithIndices(), (torch.randn(1, 2, 4, 4),), target="llvm")


class TwoInputs(torch.nn.Module):
    def forward(self, x, y):
        return x + y


def test_compile_without_example_inputs_names_the_missing_arguments():
    with pytest.raises(kiln.FrontendError, match=r"do not fit TwoInputs.forward\(x, y\).*example_inputs"):
        kiln.compile(TwoInputs())


@pytest.mark.parametrize("threads", [0, -1, 1.5])
def test_threads_must_be_a_positive_count(threads):
    with pytest.raises(kiln.TargetError, match="threads"):
        kiln.compile(models.MLP().eval(), (torch.randn(4, 64),), threads=threads)


def test_compile_leaves_the_users_module_in_the_mode_it_was_in():
    model = models.SmallCNN().train()
    for module in model.modules():  # a mixed mode: what computes otherwise in training is in eval mode
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.Dropout)):
            module.eval()
    modes = [m.training for m in model.modules()]
    kiln.compile(model, (torch.randn(2, 3, 32, 32),))
    assert [m.training for m in model.modules()] == modes


class Scaled(torch.nn.Module):
    def forward(self, x, mode="double", scale=2, bias=None):
        y = x * scale if mode == "double" else x
        return y if bias is None else y + bias


def test_non_tensor_keywords_are_constants_checked_at_call_time():
    x = torch.randn(3)
    compiled = kiln.compile(Scaled(), (x,), example_kwargs={"mode": "double", "scale": 3})
    assert torch.allclose(compiled(x, mode="double", scale=3), x * 3)
    assert torch.allclose(compiled(x), x * 3)  # left out: the compiled values
    with pytest.raises(kiln.InputMismatchError, match="'scale' was compiled as the constant 3; got 4"):
        compiled(x, scale=4)
    with pytest.raises(kiln.InputMismatchError, match="'mode' was compiled as the constant 'double'"):
        compiled(x, mode="same")


def test_an_importer_failure_names_the_node_op_and_model_line(monkeypatch):
    from kiln.backends.tvm.converters import CONVERTERS

    def broken(node, importer):
        raise RuntimeError("planted importer failure")

    monkeypatch.setitem(CONVERTERS, "gelu.default", broken)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    with pytest.raises(kiln.BackendError) as caught:
        kiln.compile(model, (torch.randn(2, 8),))
    message = str(caught.value)
    assert "node 'gelu'" in message and "aten.gelu.default" in message and "planted importer failure" in message
    assert caught.value.stage == "import"


def test_an_unexpected_failure_is_a_kiln_error_naming_the_stage(monkeypatch):
    from kiln.backends import tvm as tvm_backend

    def broken(graph):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(tvm_backend, "to_relax", broken)
    with pytest.raises(kiln.KilnError, match="tvm step 'import' failed: ZeroDivisionError: planted"):
        kiln.compile(models.MLP().eval(), (torch.randn(4, 64),))
