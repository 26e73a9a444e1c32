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
    """Capture already drops dead code, so the dead branch is what a pass would leave: a second
    linear layer on the input whose result nothing reads."""
    from kiln.ir import from_torch
    from kiln.passes import get_pass

    model, x = nn.Linear(4, 4).eval(), torch.randn(2, 4)
    graph = from_torch(model, (x,))
    linear = next(n for n in graph.nodes if n.op == "call_function")
    weight = graph.add_constant(torch.randn(4, 4), "unused_weight", before=linear)
    with graph.module.graph.inserting_after(linear):
        graph.module.graph.call_function(torch.ops.aten.linear.default, (linear.args[0], weight))
    graph.finalize()
    assert ops(graph).count("aten.linear") == 2 and graph.stats().params == 4 * 4 + 4 + 4 * 4
    result = get_pass("dce")(graph)
    assert ops(result.graph).count("aten.linear") == 1
    assert result.graph.stats().params == 4 * 4 + 4
    assert torch.equal(result.graph.run(x)[0], model(x))


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
