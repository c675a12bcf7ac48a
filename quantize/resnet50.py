"""ResNet-50 v1.5's row of the architecture table: its blocks, stages, pairs, report points.

A stem convolution (``conv1``) and max pool, four stages of bottleneck blocks
(``layer<k>.<j>``: conv1 -> conv2 -> conv3, plus the shortcut, then ReLU), a global
average pool and the fully connected head (``fc``).
"""

from __future__ import annotations

from torch import nn

from convert.models.resnet import ResNet50

from .architecture import LOGITS, Parts
from .folding import fold_batch_norm, folded_conv
from .onednn import Int8AvgPool, Int8Bottleneck, Int8Conv, Int8Linear, Int8MaxPool, QParams
from .simulated import SimAvgPool, SimBottleneck, SimLinear, SimMaxPool, SimNet

STAGES = range(1, 5)  # layer1 ... layer4


def _block_names(model: nn.Module) -> list[str]:
    """layer1.0, layer1.1, ... layer4.2 (``model``: fp32 or SimNet)."""
    return [f"layer{k}.{j}" for k in STAGES for j in range(len(getattr(model, f"layer{k}")))]


def _simulated_bottleneck(block: nn.Module) -> SimBottleneck:
    downsample = None
    if block.downsample is not None:
        downsample = folded_conv(block.downsample[0], block.downsample[1], "none")
    return SimBottleneck(
        folded_conv(block.conv1, block.bn1, "relu"),
        folded_conv(block.conv2, block.bn2, "relu"),
        folded_conv(block.conv3, block.bn3, "none", out_quant=False),
        downsample,
    )


def simulated_parts(model: ResNet50) -> Parts:
    parts = [
        ("conv1", folded_conv(model.conv1, model.bn1, "relu")),
        ("maxpool", SimMaxPool(model.maxpool.kernel_size, model.maxpool.stride)),
    ]
    for k in STAGES:
        blocks = [_simulated_bottleneck(block) for block in getattr(model, f"layer{k}")]
        parts.append((f"layer{k}", nn.Sequential(*blocks)))
    weight, bias = fold_batch_norm(model.fc, None)
    return [*parts, ("avgpool", SimAvgPool(None)), ("fc", SimLinear(weight, bias))]


def int8_parts(sim: SimNet, inp: QParams) -> Parts:
    conv1 = Int8Conv(sim.conv1, inp, QParams(sim.conv1.out_quant))
    maxpool = Int8MaxPool(sim.maxpool.kernel, sim.maxpool.stride, conv1.out)
    parts = [("conv1", conv1), ("maxpool", maxpool)]
    current = maxpool.out
    for k in STAGES:
        blocks = []
        for block in getattr(sim, f"layer{k}"):
            blocks.append(Int8Bottleneck(block, current))
            current = blocks[-1].out
        parts.append((f"layer{k}", nn.Sequential(*blocks)))
    avgpool = Int8AvgPool(sim.avgpool, current)
    return [*parts, ("avgpool", avgpool), ("fc", Int8Linear(sim.fc, avgpool.out))]


def stage_names(net: SimNet) -> list[str]:
    return ["conv1", "maxpool", *_block_names(net), "avgpool", "fc"]


def equalization_pairs(net: SimNet) -> list[tuple[str, str]]:
    # within each bottleneck only: conv3's output meets the shortcut before its ReLU
    pairs = []
    for block in _block_names(net):
        pairs += [(f"{block}.conv1", f"{block}.conv2"), (f"{block}.conv2", f"{block}.conv3")]
    return pairs


def report_points(model: ResNet50) -> list[str]:
    return ["maxpool", *_block_names(model), "avgpool", LOGITS]
