import torch
from torch import nn

from kiln import models
from tests.passes.helpers import ops, run_pass


def test_folds_every_conv_batch_norm_pair():
    model = models.SmallCNN().eval()
    before, result = run_pass("fold_batch_norm", model, torch.randn(2, 3, 16, 16))
    assert ops(before).count("aten.batch_norm") == 2
    assert "aten.batch_norm" not in ops(result.graph)
    assert result.changes == 2
    # the first conv had no bias: folding gives it one
    conv = next(n for n in result.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target))
    assert conv.args[2] is not None


def test_folds_into_linear_and_keeps_grouped_convs_right():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=4), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 6), nn.BatchNorm1d(6))
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    _, result = run_pass("fold_batch_norm", model.eval(), torch.randn(3, 8, 6, 6))
    assert result.changes == 2


def test_leaves_batch_norm_whose_input_has_other_users():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    _, result = run_pass("fold_batch_norm", Shared().eval(), torch.randn(1, 3, 4, 4))
    assert result.changes == 0 and "aten.batch_norm" in ops(result.graph)


def test_half_precision_layers_stay_half_precision():
    model = models.SmallCNN().half().eval()
    _, result = run_pass("fold_batch_norm", model, torch.randn(1, 3, 16, 16).half())
    assert result.changes == 2
    weights = [result.graph.constant(n) for n in result.graph.nodes if n.op == "get_attr"]
    assert weights and all(w.dtype == torch.float16 for w in weights if w.is_floating_point())
