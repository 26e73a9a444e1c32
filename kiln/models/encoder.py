"""A BERT-style transformer encoder in plain PyTorch (post-norm, GELU, separate Q/K/V projections).

Q, K and V are separate Linear layers, as in BERT checkpoints, so Kiln's parallel-linear merge has
the same work to do here as on a real model.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    vocab: int = 30522
    hidden: int = 768
    heads: int = 12
    layers: int = 12
    intermediate: int = 3072
    max_positions: int = 512

    @classmethod
    def tiny(cls) -> "EncoderConfig":
        return cls(vocab=1000, hidden=64, heads=4, layers=2, intermediate=128, max_positions=64)


class SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.hidden // config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.output = nn.Linear(config.hidden, config.hidden)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        batch, _, seq, _ = context.shape
        return self.output(context.transpose(1, 2).reshape(batch, seq, -1))


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden)
        self.ffn_in = nn.Linear(config.hidden, config.intermediate)
        self.ffn_out = nn.Linear(config.intermediate, config.hidden)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x)))
        ffn = self.ffn_out(nn.functional.gelu(self.ffn_in(x)))
        return self.norm2(x + self.dropout(ffn))


class TransformerEncoder(nn.Module):
    """Token ids in, hidden states out: BERT-base with `EncoderConfig()`."""

    def __init__(self, config: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(config.vocab, config.hidden)
        self.positions = nn.Embedding(config.max_positions, config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))
        self.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.norm(self.embed(tokens) + self.positions(positions))
        for layer in self.layers:
            x = layer(x)
        return x
