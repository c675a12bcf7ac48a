"""ResNet-50 v1.5 as in MLPerf's TF "resnet_model" graph, written like torchvision's.

Padding equals TF's for any input size:
- ``conv1`` (7x7/2) and each strided 3x3 ``conv2``: TF pads explicitly ``(k-1)//2`` before
  and ``k-1-(k-1)//2`` after, then runs VALID. For odd k both are (k-1)/2, so PyTorch's
  symmetric ``padding=(k-1)//2`` is identical, whatever the input size.
- stride-1 3x3 convs run SAME: with stride 1 TF's total pad is always k-1 = 2, split 1/1.
- 1x1 convs (SAME at stride 1, or a zero Pad + VALID at stride 2) never pad.
- ``maxpool`` (3x3/2 SAME) depends on the input size (0/1 on even sizes): it pads with -inf
  the way TF does (see padding.py), which ``MaxPool2d(padding=1)`` would not.
"""

from __future__ import annotations

import torch
from torch import nn

from .padding import MaxPool2dSame

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, v1.5) -> 1x1 expand, plus the shortcut."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        bn_eps: float = 1.001e-5,
    ):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=bn_eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=bn_eps)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 v1.5. Input NCHW float32 (MLPerf "vgg" preprocessing), output logits.

    Call ``.eval()`` before inference: batch norm must use the converted running stats.
    """

    def __init__(self, num_classes: int = 1001, bn_eps: float = 1.001e-5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MaxPool2dSame(3, 2)
        in_channels = 64
        for index, (blocks, width, stride) in enumerate(
            zip(STAGE_BLOCKS, STAGE_WIDTHS, STAGE_STRIDES, strict=True), start=1
        ):
            stage = self._make_stage(in_channels, width, blocks, stride, bn_eps)
            setattr(self, f"layer{index}", stage)
            in_channels = width * EXPANSION
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    @staticmethod
    def _make_stage(
        in_channels: int, width: int, blocks: int, stride: int, bn_eps: float
    ) -> nn.Sequential:
        out_channels = width * EXPANSION
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
        )
        layers = [Bottleneck(in_channels, width, stride, downsample, bn_eps)]
        layers += [Bottleneck(out_channels, width, 1, None, bn_eps) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)
