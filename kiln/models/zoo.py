"""Every reference model with an example input. Each entry seeds its own weights and inputs, so
two processes, or two machines with the same PyTorch, build the same numbers (the GPU check
builds modules here and compares them there)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from kiln.models.cnn import SmallCNN
from kiln.models.encoder import EncoderConfig, TransformerEncoder
from kiln.models.mlp import MLP
from kiln.models.mobilenet import mobilenet_v2
from kiln.models.multi_io import TwoHeads
from kiln.models.resnet import resnet18

Example = tuple[nn.Module, tuple[torch.Tensor, ...]]


def _seeded(build: Callable[[], Example]) -> Callable[[], Example]:
    def make() -> Example:
        torch.manual_seed(0)
        model, inputs = build()
        return model.eval(), inputs

    return make


ZOO: dict[str, Callable[[], Example]] = {
    "mlp": _seeded(lambda: (MLP(), (torch.randn(4, 64),))),
    "cnn_batch_norm": _seeded(lambda: (SmallCNN(), (torch.randn(2, 3, 32, 32),))),
    "resnet18": _seeded(lambda: (resnet18(), (torch.randn(1, 3, 224, 224),))),
    "mobilenet_v2": _seeded(lambda: (mobilenet_v2(), (torch.randn(1, 3, 224, 224),))),
    "transformer_encoder": _seeded(
        lambda: (TransformerEncoder(EncoderConfig.tiny()), (torch.randint(0, 1000, (2, 32)),))
    ),
    "multi_input_output": _seeded(lambda: (TwoHeads(), (torch.randn(2, 3, 16, 16), torch.randn(2, 24)))),
}

# what `kiln demo`, `kiln tune` and `kiln compile` offer by name: the zoo's models, the encoder at a
# BERT-like sequence of 128
DEMOS: dict[str, Callable[[], Example]] = {
    "resnet18": ZOO["resnet18"],
    "mobilenet_v2": ZOO["mobilenet_v2"],
    "cnn": _seeded(lambda: (SmallCNN(), (torch.randn(1, 3, 32, 32),))),
    "encoder": _seeded(lambda: (TransformerEncoder(EncoderConfig(layers=2)), (torch.randint(0, 30522, (1, 128)),))),
}
