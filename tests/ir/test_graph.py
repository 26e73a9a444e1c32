import torch

from kiln import models
from kiln.ir import from_torch, load_graph, save_graph
from tests.conftest import assert_matches, eager


def test_every_node_has_shape_and_dtype_and_prints_readably():
    graph = from_torch(models.SmallCNN().eval(), (torch.randn(2, 3, 32, 32),), dynamic_batch=True)
    for node in graph.nodes:
        if node.op in ("call_function", "placeholder", "get_attr"):
            assert hasattr(node.meta["val"], "shape"), node
    text = graph.text()
    assert text.startswith("graph(%x: float32[batch, 3, 32, 32])")
    assert "aten.conv2d(%x, %features_0_weight, None, [1, 1], [1, 1])" in text
    assert "float32[batch, 16, 32, 32]" in text


def test_statistics_count_ops_params_and_flops():
    stats = from_torch(models.resnet18(), (torch.randn(1, 3, 224, 224),)).stats()
    assert stats.ops["aten.conv2d"] == 20 and stats.ops["aten.linear"] == 1
    # ResNet-18: 11.69 M parameters with batch-norm buffers, 1.82 GMACs = 3.63 GFLOP at 224²
    assert 11_680_000 < stats.params < 11_700_000
    assert 3.6e9 < stats.flops < 3.7e9
    assert stats.param_bytes >= 4 * 11_680_000


def test_attention_flops_follow_sequence_length():
    config = models.EncoderConfig.tiny()
    short = from_torch(models.TransformerEncoder(config), (torch.randint(0, 100, (1, 16)),)).stats().flops
    long = from_torch(models.TransformerEncoder(config), (torch.randint(0, 100, (1, 32)),)).stats().flops
    assert 2 * short < long < 4 * short  # linear terms double, score terms quadruple


def test_graph_runs_as_reference_and_survives_save_load(tmp_path):
    model, x = models.MLP().eval(), torch.randn(5, 64)
    graph = from_torch(model, (x,), dynamic_batch=True)
    assert_matches(graph.run(x)[0], eager(model, x))
    save_graph(graph, tmp_path / "mlp.kilnir")
    loaded = load_graph(tmp_path / "mlp.kilnir")
    assert loaded.inputs[0].shape == ("batch", 64)
    assert_matches(loaded.run(x[:2])[0], eager(model, x[:2]))


def test_finalize_rederives_shapes_of_changed_nodes_and_their_users_only(monkeypatch):
    """A pass that widens one layer: that layer and everything after it get new shapes; the
    untouched layers before it keep theirs without being propagated again."""
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    model, x = models.MLP().eval(), torch.randn(5, 64)
    graph = from_torch(model, (x,), dynamic_batch=True).copy()
    linears = [n for n in graph.nodes if n.target is torch.ops.aten.linear.default]
    first, last = linears[0], linears[-1]
    before_first = first.meta["val"]
    # the last linear layer gets twice the outputs: a new weight and bias
    weight, bias = graph.constant(last.args[1]), graph.constant(last.args[2])
    new_weight = graph.add_constant(torch.cat([weight, weight]), "wide_weight", last)
    new_bias = graph.add_constant(torch.cat([bias, bias]), "wide_bias", last)
    last.args = (last.args[0], new_weight, new_bias)
    ran: list[str] = []
    original = FakeTensorProp.run_node
    monkeypatch.setattr(FakeTensorProp, "run_node", lambda self, n: ran.append(n.name) or original(self, n))
    graph.finalize()
    out_features = 2 * weight.shape[0]
    assert tuple(last.meta["val"].shape)[1] == out_features
    assert graph.outputs[0].shape == ("batch", out_features)
    assert last.name in ran and first.name not in ran and first.meta["val"] is before_first
    assert len(ran) < len(graph.nodes) / 2, ran
    assert_matches(graph.run(x)[0], eager(model, x).repeat(1, 2))
