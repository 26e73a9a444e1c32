import torch
from torch import nn

from tests.passes.helpers import ops, run_pass


class Repeated(nn.Module):
    def forward(self, x):
        unused = torch.exp(x)  # noqa: F841 - dead code on purpose
        return torch.tanh(x) + torch.tanh(x) * torch.sigmoid(x)


def test_cse_merges_identical_computations():
    before, result = run_pass("cse", Repeated(), torch.randn(3, 5))
    assert ops(before).count("aten.tanh") == 2
    assert ops(result.graph).count("aten.tanh") == 1
    assert result.changes == 1


def test_dce_removes_unused_nodes_and_weights():
    class DeadBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            self.unused(x)
            return self.used(x)

    before, result = run_pass("dce", DeadBranch(), torch.randn(2, 4))
    assert ops(before).count("aten.linear") == 2
    assert ops(result.graph).count("aten.linear") == 1
    assert result.graph.stats().params == before.stats().params // 2


def test_fold_constants_computes_weight_only_subgraphs():
    class ScaledWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ (self.weight.t() * 2.0)

    before, result = run_pass("fold_constants", ScaledWeight(), torch.randn(3, 4))
    assert {"aten.t", "aten.mul"} <= set(ops(before))
    assert ops(result.graph) == ["aten.matmul"]


def test_fold_constants_does_not_inflate_weights():
    class Expand(nn.Module):
        def __init__(self):
            super().__init__()
            self.row = nn.Parameter(torch.randn(1, 512))

        def forward(self, x):
            return x + self.row.expand(64, 512)

    _, result = run_pass("fold_constants", Expand(), torch.randn(64, 512))
    assert "aten.expand" in ops(result.graph)
