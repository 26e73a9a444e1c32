"""A multi-layer perceptron: the smallest model that exercises linear layers and activations."""

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int = 64, hidden: int = 128, out_features: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out_features)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.relu(self.fc1(x)))
        x = torch.nn.functional.gelu(self.fc2(x))
        return self.head(x)
