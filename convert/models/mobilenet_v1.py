"""MobileNet-v1 1.0/224 as in TF-slim's frozen graph, with TF-exact SAME padding.

Every conv pads with ``TFSamePad2d`` for the actual input size: at stride 2 on an even
input TF pads 0 before and 1 after, which PyTorch's symmetric ``padding=`` cannot do.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .padding import TFSamePad2d

# Output channels and stride of the 13 depthwise-separable blocks, features[1..13].
BLOCK_CHANNELS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
BLOCKS = tuple(zip(BLOCK_CHANNELS, BLOCK_STRIDES, strict=True))
STEM_CHANNELS = 32


class ConvBNReLU6(nn.Sequential):
    """TF-SAME pad -> conv (no bias) -> batch norm -> ReLU6; children named pad/conv/bn/relu."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bn_eps: float = 1e-3,
    ):
        super().__init__(
            OrderedDict(
                pad=TFSamePad2d(kernel_size, stride),
                conv=nn.Conv2d(
                    in_channels, out_channels, kernel_size, stride, groups=groups, bias=False
                ),
                bn=nn.BatchNorm2d(out_channels, eps=bn_eps),
                relu=nn.ReLU6(inplace=True),
            )
        )


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (carries the stride) followed by a 1x1 pointwise conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_eps: float = 1e-3):
        super().__init__()
        self.depthwise = ConvBNReLU6(
            in_channels, in_channels, 3, stride, groups=in_channels, bn_eps=bn_eps
        )
        self.pointwise = ConvBNReLU6(in_channels, out_channels, 1, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    """MobileNet-v1 1.0. Input NCHW float32 in [-1, 1] (MLPerf "mobilenet" recipe).

    Output logits [N, num_classes]. Call ``.eval()`` before inference.
    """

    def __init__(self, num_classes: int = 1001, bn_eps: float = 1e-3):
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, 3, 2, bn_eps=bn_eps)]
        in_channels = STEM_CHANNELS
        for out_channels, stride in BLOCKS:
            layers.append(DepthwiseSeparable(in_channels, out_channels, stride, bn_eps))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        # TF: AvgPool 7x7 VALID, the whole 7x7 map only for a 224x224 (CROP_SIZE) input
        self.avgpool = nn.AvgPool2d(7)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.avgpool(self.features(x)))
        return torch.flatten(x, 1)
