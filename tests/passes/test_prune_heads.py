"""Attention-head pruning: whole heads leave nn.MultiheadAttention and hand-written attention alike,
and the pruned graph computes exactly the original with those heads silenced."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kiln
from kiln.ir import from_torch
from kiln.passes import get_pass
from tests.conftest import assert_matches


class Encoder(nn.Module):
    def __init__(self, batch_first: bool, layers: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(64, 8, 128, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.batch_first = batch_first
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(x if self.batch_first else x.transpose(0, 1))
        return self.head(hidden.mean(1 if self.batch_first else 0))


class HandWritten(nn.Module):
    """Separate q/k/v projections and a (B, L, H, D) head split: the other way attention is written."""

    def __init__(self, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        split = lambda t: t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)  # noqa: E731
        attended = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


def _kept_heads(result) -> list[list[int]]:
    return [eval(line.split("kept ")[1].rstrip(")")) for line in result.layers.values()]


def _silenced(out_projection: nn.Linear, kept: list[int], heads: int) -> None:
    """Zero the output-projection columns of every head not in `kept`: what removing them means."""
    width = out_projection.in_features // heads
    with torch.no_grad():
        for head in set(range(heads)) - set(kept):
            out_projection.weight[:, head * width: (head + 1) * width] = 0


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "sequence_first"])
def test_multihead_attention_loses_half_its_heads_and_computes_the_silenced_original(batch_first):
    torch.manual_seed(0)
    model, x = Encoder(batch_first).eval(), torch.randn(2, 12, 64)
    result = get_pass("prune_heads")(from_torch(model, (x,)), ratio=0.5)
    kept = _kept_heads(result)
    assert result.changes == 2 and [len(k) for k in kept] == [4, 4]
    reference = copy.deepcopy(model)
    for layer, heads in zip(reference.encoder.layers, kept):
        _silenced(layer.self_attn.out_proj, heads, 8)
    with torch.no_grad():
        assert_matches(result.graph.run(x)[0], reference(x))
        assert not torch.allclose(result.graph.run(x)[0], model(x), atol=1e-3)  # heads really went


def test_hand_written_attention_heads_are_pruned_too():
    torch.manual_seed(0)
    model, x = HandWritten().eval(), torch.randn(2, 10, 64)
    result = get_pass("prune_heads")(from_torch(model, (x,)), ratio=0.5)
    (kept,) = _kept_heads(result)
    reference = copy.deepcopy(model)
    _silenced(reference.out, kept, 4)
    with torch.no_grad():
        assert_matches(result.graph.run(x)[0], reference(x))
    projections = [n for n in result.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]
    assert [tuple(n.meta["val"].shape)[-1] for n in projections] == [32, 32, 32, 64]


def test_pruned_encoder_compiles_for_llvm_and_matches_its_own_ir():
    torch.manual_seed(0)
    model, x = Encoder(batch_first=True).eval(), torch.randn(2, 12, 64)
    compiled = kiln.compile(model, (x,), prune=kiln.Prune(ratio=0.5))
    rows = {row.name: row for row in compiled.report.rows}
    assert rows["prune_heads"].changes == 2  # half the heads of both layers
    assert rows["prune_channels"].changes == 2 * 64  # and half of both feed-forward blocks
    with torch.no_grad():
        (own_ir,) = compiled.graph.run(x)
    assert_matches(compiled(x), own_ir)


def test_heads_of_attention_written_out_in_matmuls_are_pruned_too():
    """The real MiniLM (Hugging Face eager attention: softmax(q·kᵀ·scale + mask)·v in matmuls):
    half of each layer's 12 heads go, and the IR computes the original with them silenced."""
    minilm = pytest.importorskip("tests.minilm")
    encoder, inputs, _ = minilm.encoded()
    inputs = tuple(t[:8] for t in inputs)
    result = get_pass("prune_heads")(from_torch(encoder, inputs), ratio=0.5)
    kept = _kept_heads(result)
    assert result.changes == 6 and all(len(heads) == 6 for heads in kept)
    reference = copy.deepcopy(encoder)
    for layer, heads in zip(reference.bert.encoder.layer, kept):
        _silenced(layer.attention.output.dense, heads, 12)
    with torch.no_grad():
        assert_matches(result.graph.run(*inputs)[0], reference(*inputs))
