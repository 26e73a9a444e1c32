"""Mixed precision: conv/linear/matmul in fp16 or bf16 with half-width weights, sensitive ops kept
in float32; compiled for this CPU against the IR, and built for CUDA."""

from __future__ import annotations

import pytest
import torch

import kiln
from kiln import models
from kiln.ir.stats import op_name

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_transformer_computes_its_layers_in_half_precision_and_the_rest_in_float32(mode):
    torch.manual_seed(0)
    model, tokens = models.TransformerEncoder(models.EncoderConfig(layers=2)).eval(), torch.randint(0, 1000, (1, 32))
    compiled = kiln.compile(model, (tokens,), quantize=mode)
    rows = [row for row in compiled.report.rows if row.stage == "kiln"]
    layers = next(row for row in rows if row.name == "half_precision").changes
    assert layers >= 2 * 6  # q/k/v (merged), attention output, two feed-forward: per layer
    weights = [compiled.graph.constant(n.args[1]) for n in compiled.graph.nodes if op_name(n) == "aten.linear"]
    assert weights and all(w.dtype == HALF[mode] for w in weights)  # half the bytes
    dtypes = {op_name(n): n.meta["val"].dtype for n in compiled.graph.nodes if n.op == "call_function"}
    assert dtypes["aten.linear"] == HALF[mode]
    for sensitive in ("aten._softmax", "aten.softmax", "aten.layer_norm"):
        assert dtypes.get(sensitive, torch.float32) == torch.float32, sensitive
    with torch.no_grad():
        (own_ir,) = compiled.graph.run(tokens)
        reference = model(tokens)
    got = compiled(tokens)
    assert _cosine(got, own_ir) > 0.99999 and _cosine(got, reference) > 0.9999


def test_fp16_cnn_builds_for_cuda():
    model, x = models.SmallCNN().eval(), torch.randn(1, 3, 32, 32)
    compiled = kiln.compile(model, (x,), quantize="fp16", target="cuda")
    assert "cuda" in compiled.executable.module_kinds()
