"""scikit-learn's bundled handwritten digits (1,797 real 8×8 images), a fixed train/test split and
a small CNN trained on it in a few seconds: the accuracy tests' model and data (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Digits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]  # a 20% held-out test split
    return Digits(images[train], labels[train], images[test], labels[test])


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * 16, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsMLP(nn.Module):
    """A linear-heavy model: what low-rank factorization is for."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def batches(digits: Digits, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training split as (images, labels) batches: what kiln.distill and calibration take."""
    return [(digits.train_x[i: i + size], digits.train_y[i: i + size]) for i in range(0, len(digits.train_y), size)]


def train(model: nn.Module, digits: Digits, epochs: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(digits.train_y)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(digits.train_x[batch]), digits.train_y[batch]).backward()
            optimizer.step()
    return model.eval()


def accuracy(predict, digits: Digits) -> float:
    """Top-1 accuracy in percent on the held-out split; `predict` maps images to logits."""
    with torch.no_grad():
        return 100.0 * (predict(digits.test_x).argmax(1) == digits.test_y).float().mean().item()
