"""ResNet-50 v1.5 weights from a frozen graph, found by following the graph's edges.

From the input: conv1 -> batch norm -> Relu -> max-pool, then bottleneck blocks (a 3-conv
main branch and a projection or identity shortcut meeting in an Add + Relu) until a global
average pool, then the classifier. The stages are read from the shortcuts: a projection
starts a new stage, and the stage sizes must be ResNet-50's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import UserError

from .batchnorm import BatchNormParams
from .graph import ADD_OPS, tensor_name
from .models import resnet as resnet_arch
from .walker import ConvOp, ExtractedWeights, Walker

_CONV_STARTS = ("Pad", "Conv2D")


@dataclass
class _Branch:
    convs: list[tuple[ConvOp, BatchNormParams]]
    add: Any


def _branch(w: Walker, first, block: str) -> _Branch:
    """Follow conv -> BN (-> Relu -> conv -> BN ...) from ``first`` until an Add."""
    convs = []
    node = first
    while True:
        conv = w.conv_at(node, block, "Conv2D")
        bn = w.batch_norm(conv)
        convs.append((conv, bn))
        after = w.graph.next_op(bn.output, ("Relu", *ADD_OPS), f"the Relu or Add of {block}")
        if after.op in ADD_OPS:
            return _Branch(convs, after)
        node = w.graph.next_op(after.name, _CONV_STARTS, f"the next conv of {block}")


def _block(w: Walker, x: str, block: str):
    """Read one bottleneck whose input is node ``x``; return (main, shortcut or None, relu)."""
    consumers = w.graph.data_consumers(x)
    starts = [c for c in consumers if c.op in _CONV_STARTS]
    direct_adds = [c for c in consumers if c.op in ADD_OPS]
    if not starts or len(starts) + len(direct_adds) != len(consumers):
        raise UserError(
            f"{w.source}: after {x} expected bottleneck {block} (convs and a shortcut Add), "
            f"but found {w.graph.describe(consumers)}"
        )
    branches = [_branch(w, s, block) for s in starts]
    main = [b for b in branches if len(b.convs) == 3]
    shortcut = [b for b in branches if len(b.convs) == 1]
    if len(main) != 1 or len(main) + len(shortcut) != len(branches) or len(shortcut) > 1:
        sizes = [len(b.convs) for b in branches]
        raise UserError(
            f"{w.source}: block {block} after {x} has branches of {sizes} convs, expected "
            f"a 3-conv main branch and a 1-conv or identity shortcut"
        )
    add = main[0].add
    if (shortcut and shortcut[0].add.name != add.name) or (not shortcut and add not in direct_adds):
        raise UserError(
            f"{w.source}: the branches of block {block} do not meet in one Add (the main "
            f"branch ends in {add.name} ({add.op}))"
        )
    relu = w.graph.next_op(add.name, ("Relu",), f"the Relu closing {block}")
    return main[0], (shortcut[0] if shortcut else None), relu


def _stem(w: Walker, x: str) -> str:
    conv = w.conv_from(x, "conv1", "Conv2D")
    bn = w.conv_bn(conv, "conv1", "conv1", "bn1", stride=2, padding="symmetric")
    relu = w.graph.next_op(bn.output, ("Relu",), "the stem Relu")
    w.add_layer("stem (conv1/bn1/relu)", "relu", relu.name)
    pool = w.graph.next_op(relu.name, ("MaxPool",), "the stem max-pool")
    ksize, strides = w.spatial_pair(pool, "ksize"), w.spatial_pair(pool, "strides")
    padding = w.graph.attr_str(pool, "padding")
    if ksize != (3, 3) or strides != (2, 2) or padding != "SAME":
        raise UserError(
            f"{w.source}: max-pool {pool.name} (MaxPool) is {ksize}/{strides} {padding}, "
            f"where a 3x3/2 SAME max-pool was expected"
        )
    w.add_layer("maxpool", "maxpool", pool.name)
    return pool.name


def _layer_name(index: int) -> str:
    """The PyTorch name of ResNet-50's bottleneck number ``index`` (from 0), e.g. "layer2.1"."""
    for stage, count in enumerate(resnet_arch.STAGE_BLOCKS, start=1):
        if index < count:
            return f"layer{stage}.{index}"
        index -= count
    return f"bottleneck {sum(resnet_arch.STAGE_BLOCKS) + index + 1} (past layer4)"


def _read_stages(w: Walker, x: str) -> tuple[list, str]:
    """Blocks until the global pool; a projection shortcut starts a new stage."""
    stages: list[list] = []
    while not any(c.op in ("Mean", "AvgPool") for c in w.graph.data_consumers(x)):
        main, shortcut, relu = _block(w, x, _layer_name(sum(map(len, stages))))
        if shortcut is not None or not stages:
            stages.append([])
        stages[-1].append((main, shortcut, relu))
        x = relu.name
    found = tuple(len(s) for s in stages)
    if found != resnet_arch.STAGE_BLOCKS:
        raise UserError(
            f"{w.source} has stages of {found} bottleneck blocks, but ResNet-50 has "
            f"{resnet_arch.STAGE_BLOCKS}"
        )
    return stages, x


def _store_stages(w: Walker, stages: list) -> None:
    for s, (blocks, stride) in enumerate(zip(stages, resnet_arch.STAGE_STRIDES, strict=True), 1):
        for b, (main, shortcut, relu) in enumerate(blocks):
            prefix = f"layer{s}.{b}"
            block_stride = stride if b == 0 else 1
            if b == 0 and shortcut is None:
                raise UserError(f"{w.source}: {prefix} has no projection shortcut")
            if shortcut is not None:
                conv, bn = shortcut.convs[0]
                w.check_conv(conv, f"{prefix}.downsample", block_stride, "symmetric")
                w.put_conv(f"{prefix}.downsample.0", conv)
                w.put_bn(f"{prefix}.downsample.1", bn)
            for i, (conv, bn) in enumerate(main.convs, start=1):
                w.check_conv(conv, prefix, block_stride if i == 2 else 1, "symmetric")
                w.put_conv(f"{prefix}.conv{i}", conv)
                w.put_bn(f"{prefix}.bn{i}", bn)
            w.add_layer(prefix, prefix, relu.name)


def extract_resnet50(w: Walker) -> ExtractedWeights:
    input_name = w.input_node()
    x = _stem(w, w.skip_layout_transpose(input_name))
    stages, x = _read_stages(w, x)
    _store_stages(w, stages)
    pool = w.global_pool(x, "the global average pool")
    w.add_layer("avgpool", "avgpool", pool.name)
    logits = w.classifier(pool.name, 512 * resnet_arch.EXPANSION, "fc", as_conv=False)
    w.add_layer("logits (fc)", "", logits)
    return w.finish(tensor_name(logits), tensor_name(input_name))
