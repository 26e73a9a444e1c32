import torch

from kiln import models
from tests.passes.helpers import ops, run_pass


def test_merges_query_key_value_projections():
    config = models.EncoderConfig.tiny()
    model = models.TransformerEncoder(config)
    before, result = run_pass("merge_parallel_linear", model, torch.randint(0, config.vocab, (2, 16)))
    per_layer = 3  # q, k, v share the layer input
    assert result.changes == per_layer * config.layers
    assert ops(result.graph).count("aten.linear") == ops(before).count("aten.linear") - 2 * config.layers
    merged = [n for n in result.graph.nodes if n.op == "get_attr" and "merged" in str(n.target) and "bias" not in str(n.target)]
    assert len(merged) == config.layers and tuple(result.graph.constant(merged[0]).shape) == (3 * config.hidden, config.hidden)


def test_leaves_single_linears_alone():
    _, result = run_pass("merge_parallel_linear", models.MLP().eval(), torch.randn(2, 64))
    assert result.changes == 0
