"""MobileNetV2 (Sandler et al., 2018) in plain PyTorch, as torchvision builds it."""

import torch
from torch import nn

from kiln.models.resnet import _init_batch_norm_statistics


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1):
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers = [] if expand == 1 else _conv_bn_relu6(in_channels, hidden, 1, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # (expansion, output channels, repeats, first stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_bn_relu6(3, 32, 3, 2)
        in_channels = 32
        for expand, channels, repeats, stride in self.SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(in_channels, channels, stride if index == 0 else 1, expand))
                in_channels = channels
        layers += _conv_bn_relu6(in_channels, 1280, 1, 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))
        _init_batch_norm_statistics(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(classes: int = 1000) -> MobileNetV2:
    torch.manual_seed(0)
    return MobileNetV2(classes).eval()
