"""Fold TensorFlow "SAME" zero pads into the convolutions that follow them.

The converted models pad explicitly (``TFSamePad2d``) before each VALID conv so that the
port equals TF for any input size. For one fixed input size the pad can instead become the
conv's own ``padding``: an even split directly, an odd one (TF pads one more after the
data) on a depthwise conv by growing its kernel with zero taps in front.
"""

from __future__ import annotations

import torch
from torch import nn

from .padding import TFSamePad2d, tf_same_pads


def fold_same_padding(module: nn.Module, example: torch.Tensor) -> int:
    """Move each zero TF-SAME pad into its conv (in place); return how many were folded.

    Each explicit pad before a convolution is one extra copy of the activations. An even
    split becomes ``conv.padding``; an odd one (TF pads one more after the data) on a
    depthwise conv also grows the kernel by zero taps in front (``_prepend_zero_taps``).
    Both compute the same sums; valid only for the fixed input size of ``example``.
    """
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record_size(layer: nn.Module, args: tuple) -> None:  # None: the input is unchanged
        sizes.setdefault(layer, tuple(args[0].shape[-2:]))

    hooks = [
        layer.register_forward_pre_hook(record_size)
        for layer in module.modules()
        if isinstance(layer, TFSamePad2d)
    ]
    try:
        with torch.inference_mode():
            module(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    folded = 0
    for parent in module.modules():
        if isinstance(parent, nn.Sequential):
            folded += _fold_in_sequence(parent, sizes)
    return folded


def _fold_in_sequence(parent: nn.Sequential, sizes: dict) -> int:
    folded = 0
    names = list(parent._modules)
    for name, next_name in zip(names, names[1:], strict=False):
        pad, conv = parent._modules[name], parent._modules[next_name]
        if pad not in sizes or pad.value != 0.0 or not isinstance(conv, nn.Conv2d):
            continue
        if conv.padding != (0, 0) or conv.kernel_size != (pad.kernel_size,) * 2:
            continue
        if conv.stride != (pad.stride,) * 2 or conv.dilation != (1, 1):
            continue
        height, width = sizes[pad]
        pads = tf_same_pads(height, pad.kernel_size, pad.stride)
        pads += tf_same_pads(width, pad.kernel_size, pad.stride)
        if pads[0] != pads[1] or pads[2] != pads[3]:
            if conv.groups != conv.in_channels or pads[1] - pads[0] != pads[3] - pads[2]:
                continue
            _prepend_zero_taps(conv, pads[1] - pads[0])
        conv.padding = (pads[1], pads[3])
        parent._modules[name] = nn.Identity()
        folded += 1
    return folded


def _prepend_zero_taps(conv: nn.Conv2d, taps: int) -> None:
    """Grow ``conv``'s kernel by ``taps`` zero rows and columns at the top and left.

    TF pads ``b`` before and ``b + taps`` after; a conv padded ``b + taps`` on both sides
    whose kernel starts with ``taps`` zero taps reads the same inputs with the same weights
    (the extra products are exact zeros).
    """
    weight = conv.weight.detach()
    grown = weight.new_zeros(*weight.shape[:2], *(size + taps for size in weight.shape[2:]))
    grown[:, :, taps:, taps:] = weight
    conv.weight = nn.Parameter(grown, requires_grad=False)
    conv.kernel_size = tuple(grown.shape[2:])
