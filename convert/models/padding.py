"""TensorFlow "SAME" padding, computed for the actual input size.

TF pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total along a dimension and puts the
odd element (if any) after the data, at the bottom/right. PyTorch's symmetric ``padding=``
cannot express that split, so models pad explicitly with this module before a VALID op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return TF's (before, after) SAME padding along one dimension of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFSamePad2d(nn.Module):
    """Pad an NCHW tensor the way TF's SAME padding would for a ``kernel``/``stride`` op."""

    def __init__(self, kernel_size: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_pads(x.shape[-2], self.kernel_size, self.stride)
        left, right = tf_same_pads(x.shape[-1], self.kernel_size, self.stride)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, value={self.value}"


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TF SAME padding: pads with -inf, extra row/column after."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__(kernel_size, stride, padding=0)
        self.pad = TFSamePad2d(kernel_size, stride, value=float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))
