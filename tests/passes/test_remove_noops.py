import torch
from torch import nn

from tests.passes.helpers import ops, run_pass


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.drop(x).clone().contiguous()
        x = x.reshape(4, 6).reshape(2, 12).view(24).reshape(4, 6)  # a chain of reshapes
        x = x.permute(1, 0).permute(1, 0)  # back to the original order
        x = x * 1 + 0
        return x.transpose(0, 1).transpose(1, 0).sum(0)


def test_removes_dropout_copies_identities_and_chains():
    before, result = run_pass("remove_noops", Noisy().eval(), torch.randn(4, 6))
    remaining = ops(result.graph)
    assert "aten.dropout" in ops(before)
    for op in ("aten.dropout", "aten.clone", "aten.permute", "aten.transpose", "aten.mul", "aten.add", "aten.view"):
        assert op not in remaining, f"{op} left in {remaining}"
    assert remaining == ["aten.sum"]
    assert result.changes >= 8


def test_copy_removed_before_a_view_that_needed_its_contiguity():
    class TransposeThenView(nn.Module):
        def forward(self, x):
            return x.transpose(0, 1).contiguous()[1:].view(-1) * 2

    x = torch.randn(3, 4)
    _, result = run_pass("remove_noops", TransposeThenView().eval(), x)
    assert "aten.contiguous" not in ops(result.graph)
    (got,) = result.graph.run(x)
    torch.testing.assert_close(got, x.t()[1:].reshape(-1) * 2)


def test_keeps_real_reshapes():
    model = nn.Flatten()
    _, result = run_pass("remove_noops", model, torch.randn(2, 3, 4))
    assert ops(result.graph) == ["aten.flatten"]
