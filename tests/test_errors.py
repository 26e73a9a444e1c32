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
    return kiln.compile(models.MLP(), (torch.randn(4, 64),))


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
        kiln.compile(models.MLP(), (torch.randn(1, 64),), target="tpu")
    with pytest.raises(kiln.TargetError, match="not TVM command-line strings"):
        kiln.compile(models.MLP(), (torch.randn(1, 64),), target="llvm -mcpu=znver3")


def test_unknown_pass_lists_known_ones():
    with pytest.raises(kiln.PassError, match="unknown pass 'fold_everything'.*fold_batch_norm"):
        kiln.compile(models.MLP(), (torch.randn(1, 64),), passes=["fold_everything"])


def test_max_pool_indices_are_refused_not_zeros():
    # TVM's importer returns zeros for max-pool indices; Kiln refuses them by name instead
    class PoolWithIndices(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.max_pool2d(x, 2, return_indices=True)[1]

    with pytest.raises(kiln.errors.UnsupportedOpError, match="max_pool2d_with_indices.*indices output"):
        kiln.compile(PoolWithIndices(), (torch.randn(1, 2, 4, 4),), target="llvm")
