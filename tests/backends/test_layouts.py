"""Every layout the layout pass produces has a kernel: each convolution-family op placed after a
convolution (which ConvertLayout makes channels-last) compiles and gives eager's numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln
from tests.conftest import assert_matches

AFTER_A_CONVOLUTION = {
    "conv_transpose1d": (nn.ConvTranspose1d(8, 4, 3, stride=2), (1, 3, 16)),
    "conv_transpose2d": (nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), (1, 3, 16, 16)),
    "conv_transpose2d_groups": (nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, groups=2), (2, 3, 9, 9)),
    "conv_transpose2d_dilation": (nn.ConvTranspose2d(8, 4, 3, dilation=2), (1, 3, 7, 7)),
    "conv_transpose3d": (nn.ConvTranspose3d(8, 4, 3, stride=2), (1, 3, 6, 6, 6)),
    "conv2d_grouped": (nn.Conv2d(8, 8, 3, padding=1, groups=4), (1, 3, 10, 10)),
    "conv2d_depthwise_strided": (nn.Conv2d(8, 8, 3, stride=2, groups=8), (1, 3, 11, 11)),
    "max_pool2d": (nn.MaxPool2d(3, 2, 1), (1, 3, 13, 13)),
    "avg_pool2d": (nn.AvgPool2d(2), (1, 3, 12, 12)),
    "upsample_nearest": (nn.Upsample(scale_factor=2), (1, 3, 8, 8)),
    "upsample_bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), (1, 3, 8, 8)),
    "pixel_shuffle": (nn.PixelShuffle(2), (1, 3, 6, 6)),
    "batch_norm": (nn.BatchNorm2d(8), (1, 3, 8, 8)),
    "group_norm": (nn.GroupNorm(2, 8), (1, 3, 8, 8)),
}


@pytest.mark.parametrize("name", AFTER_A_CONVOLUTION)
def test_an_op_after_a_convolution_compiles_and_matches(name):
    layer, shape = AFTER_A_CONVOLUTION[name]
    first = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[len(shape)](3, 8, 3, padding=1)
    model = nn.Sequential(first, nn.ReLU(), layer, nn.ReLU()).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        assert_matches(kiln.compile(model, (x,))(x), model(x))
