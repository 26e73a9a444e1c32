"""A model with two inputs and a dict of two outputs: checks Kiln keeps the call signature."""

import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self, image_channels: int = 3, text_features: int = 24, hidden: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(image_channels, hidden, 3, stride=2, padding=1)
        self.text = nn.Linear(text_features, hidden)
        self.classify = nn.Linear(hidden, 5)
        self.score = nn.Linear(hidden, 1)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = torch.relu(self.conv(image)).mean(dim=(2, 3))
        joint = pooled * torch.tanh(self.text(text))
        return {"logits": self.classify(joint), "score": torch.sigmoid(self.score(joint))}
