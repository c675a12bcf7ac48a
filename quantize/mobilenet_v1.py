"""MobileNet-v1's row of the architecture table: its blocks, stages, pairs, report points.

A stem convolution (``features.0``), thirteen depthwise-separable blocks
(``features.<i>.depthwise`` / ``.pointwise``), an average pool and a 1x1 convolution as the
classifier; every activation is ReLU6 and every convolution pads TF-SAME.
"""

from __future__ import annotations

from torch import nn

from convert.models.mobilenet_v1 import ConvBNReLU6, MobileNetV1

from .architecture import LOGITS, Parts
from .folding import fold_batch_norm, folded_conv
from .onednn import Int8AvgPool, Int8Conv, Int8Separable, QParams
from .simulated import SimAvgPool, SimConv, SimNet, SimSeparable


def _separable_names(model: nn.Module) -> list[str]:
    """features.1.depthwise, features.1.pointwise, ... (``model``: fp32 or SimNet)."""
    return [
        f"features.{i}.{part}"
        for i in range(1, len(model.features))
        for part in ("depthwise", "pointwise")
    ]


def _from_conv_bn_relu6(block: ConvBNReLU6) -> SimConv:
    conv = block.conv
    weight, bias = fold_batch_norm(conv, block.bn)
    return SimConv(weight, bias, conv.stride[0], "same", conv.groups, "relu6")


def simulated_parts(model: MobileNetV1) -> Parts:
    blocks = [_from_conv_bn_relu6(model.features[0])]
    for block in list(model.features)[1:]:
        blocks.append(
            SimSeparable(_from_conv_bn_relu6(block.depthwise), _from_conv_bn_relu6(block.pointwise))
        )
    return [
        ("features", nn.Sequential(*blocks)),
        ("avgpool", SimAvgPool(model.avgpool.kernel_size)),
        ("classifier", folded_conv(model.classifier, None, "none", out_quant=False)),
    ]


def int8_parts(sim: SimNet, inp: QParams) -> Parts:
    stem = sim.features[0]
    blocks = [Int8Conv(stem, inp, QParams(stem.out_quant))]
    current = blocks[0].out
    for block in list(sim.features)[1:]:
        dw = Int8Conv(block.depthwise, current, QParams(block.depthwise.out_quant))
        pw = Int8Conv(block.pointwise, dw.out, QParams(block.pointwise.out_quant))
        blocks.append(Int8Separable(dw, pw))
        current = pw.out
    avgpool = Int8AvgPool(sim.avgpool, current)
    return [
        ("features", nn.Sequential(*blocks)),
        ("avgpool", avgpool),
        ("classifier", Int8Conv(sim.classifier, avgpool.out, None)),
    ]


def stage_names(net: SimNet) -> list[str]:
    return ["features.0", *_separable_names(net), "avgpool", "classifier"]


def equalization_pairs(net: SimNet) -> list[tuple[str, str]]:
    # one chain: the classifier pairs with the last pointwise through the average pool,
    # which is linear per channel
    chain = ["features.0", *_separable_names(net), "classifier"]
    return list(zip(chain, chain[1:], strict=False))


def report_points(model: MobileNetV1) -> list[str]:
    return ["features.0", *_separable_names(model), "avgpool", LOGITS]
