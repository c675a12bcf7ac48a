"""What the generic quantization steps ask of one converted model: an ``Architecture`` row.

The rows themselves, one per model, are in ``architectures.py``; each row names small
functions of its model's module (``mobilenet_v1.py``, ``resnet50.py``). This module
imports nothing of ``quantize`` so that the simulated and int8 networks can hold their row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

LOGITS = ""  # a report point naming the model's own output (the logits)

Parts = list[tuple[str, nn.Module]]  # named child modules, in forward order


@dataclass(frozen=True)
class Architecture:
    """One converted fp32 model and how each step of quantization finds its way in it.

    Functions taking ``net`` get the ``SimNet``; ``model`` is the fp32 module (or anything
    with the same block names, such as the ``SimNet``)."""

    name: str  # the model's profile name
    model_class: type[nn.Module]  # the converted fp32 module: isinstance picks the row
    # fp32 model -> the SimNet's parts after its input quantizer, batch norm folded
    simulated_parts: Callable[[nn.Module], Parts]
    # (SimNet, the input's QParams) -> the Int8Net's parts after its input, same names
    int8_parts: Callable[[nn.Module, object], Parts]
    # net -> the modules run one after the other after the input quantizer (bias
    # correction goes stage by stage; each one's output feeds the next)
    stage_names: Callable[[nn.Module], list[str]]
    # net -> (first, second) layer names of each pair joined by ReLU/ReLU6 (and avg pool)
    equalization_pairs: Callable[[nn.Module], list[tuple[str, str]]]
    # model -> the module names the layer report compares, in forward order, LOGITS last
    report_points: Callable[[nn.Module], list[str]]
    # the 8-bit input is quantized exactly (its codes are the uint8 pixels): MobileNet's
    # preprocessing maps pixel p to p / 127.5 - 1
    exact_pixel_input: bool
