"""Batch norm folded into the convolution before it: the ``SimConv`` of an fp32 layer."""

from __future__ import annotations

import torch
from torch import nn

from .simulated import SimConv


def fold_batch_norm(conv: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | None):
    """(weight, bias) of ``conv`` followed by ``bn`` in eval mode, folded in float64."""
    weight = conv.weight.detach().double()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64)
    )
    if bn is None:
        return weight.float(), bias.float()
    factor = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.detach().double() - factor * bn.running_mean.double()
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (weight * factor.view(shape)).float(), (bias * factor + shift).float()


def folded_conv(conv: nn.Conv2d, bn, act: str, out_quant: bool = True) -> SimConv:
    """``conv`` (+ ``bn``) as a SimConv with the fp32 layer's stride, padding and groups."""
    weight, bias = fold_batch_norm(conv, bn)
    return SimConv(weight, bias, conv.stride[0], conv.padding[0], conv.groups, act, out_quant)
