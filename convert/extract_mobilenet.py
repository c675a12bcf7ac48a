"""MobileNet-v1 1.0/224 weights from a frozen graph, found by following the graph's edges.

From the input: a 3x3/2 conv, then 13 depthwise-separable blocks (depthwise conv -> batch
norm -> ReLU6 -> 1x1 conv -> batch norm -> ReLU6), a global average pool and a classifier
(TF-slim's 1x1 conv, or a dense MatMul).
"""

from __future__ import annotations

from core.profiles import CROP_SIZE

from .graph import tensor_name
from .models import mobilenet_v1 as mobilenet_arch
from .walker import ExtractedWeights, Walker


def _conv_bn_relu6(
    w: Walker, x: str, layer: str, prefix: str, *, stride: int, size: int, depthwise: bool
) -> str:
    conv = w.conv_from(x, layer, "DepthwiseConv2dNative" if depthwise else "Conv2D")
    bn = w.conv_bn(
        conv, layer, f"{prefix}.conv", f"{prefix}.bn", stride=stride, padding="same", size=size
    )
    return w.graph.next_op(bn.output, ("Relu6",), f"the ReLU6 of {prefix}").name


def extract_mobilenet_v1(w: Walker) -> ExtractedWeights:
    input_name = w.input_node()
    x = w.skip_layout_transpose(input_name)
    size = CROP_SIZE  # explicit Pad + VALID is checked against SAME's pads at this input size
    x = _conv_bn_relu6(w, x, "features.0", "features.0", stride=2, size=size, depthwise=False)
    size = -(-size // 2)
    w.add_layer("features.0", "features.0", x)

    for index, (_, stride) in enumerate(mobilenet_arch.BLOCKS, start=1):
        block = f"features.{index}"
        x = _conv_bn_relu6(
            w, x, block, f"{block}.depthwise", stride=stride, size=size, depthwise=True
        )
        size = -(-size // stride)
        x = _conv_bn_relu6(w, x, block, f"{block}.pointwise", stride=1, size=size, depthwise=False)
        w.add_layer(block, block, x)

    pool = w.global_pool(x, "the 7x7 average pool after 13 blocks", size=size)
    w.add_layer("avgpool", "avgpool", pool.name)
    logits = w.classifier(pool.name, mobilenet_arch.BLOCKS[-1][0], "classifier", as_conv=True)
    w.add_layer("logits (classifier)", "", logits)
    return w.finish(tensor_name(logits), tensor_name(input_name))
