"""How much each layer alone costs at a width: the rest of the network stays fp32.

A calibrated ``SimNet`` holds every layer's quantized weights and every activation's
range. Switching quantization on for one layer and the activation it reads, and off
everywhere else, shows that layer's own damage: the SQNR of the logits against fp32 and
the share of images whose top-1 changes. The mixed-precision planner ranks layers by it;
``python -m eval layers --sensitivity`` reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .calibrate import chunks
from .layer_bits import Bits
from .simulated import SimNet, set_quantized
from .wiring import input_quantizers


@dataclass(frozen=True)
class LayerCost:
    """One layer quantized alone: its widths, size and what it does to the logits."""

    layer: str
    bits: Bits
    parameters: int
    logits_sqnr_db: float  # inf when the logits do not change at all
    top1_changed_share: float


def logits_of(net: SimNet, batches: list[torch.Tensor]) -> torch.Tensor:
    """``net``'s logits [N, classes] over the calibration images, as they stand."""
    with torch.inference_mode():
        return torch.cat([net(piece) for piece in chunks(batches)])


def logit_agreement(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """``(SQNR in dB, share of images keeping the reference's top-1)``."""
    noise = float(((logits.double() - reference.double()) ** 2).sum())
    signal = float((reference.double() ** 2).sum())
    sqnr = 10 * math.log10(signal / noise) if noise > 0 else math.inf
    kept = float((logits.argmax(1) == reference.argmax(1)).double().mean())
    return sqnr, kept


def layer_costs(
    net: SimNet, batches: list[torch.Tensor], layer_bits: dict[str, Bits], quiet: bool = True
) -> list[LayerCost]:
    """Every layer of a calibrated ``net`` quantized alone (forward order); ``net`` is left
    fully quantized, as it came."""
    readers = input_quantizers(net)
    modules = dict(net.named_modules())
    set_quantized(net, False)
    reference = logits_of(net, batches)
    costs = []
    try:
        for name in tqdm(layer_bits, desc="layer sensitivity", unit="layer", disable=quiet):
            switched = [modules[name]] + ([modules[readers[name]]] if name in readers else [])
            for module in switched:
                module.quantized = True
            sqnr, kept = logit_agreement(logits_of(net, batches), reference)
            for module in switched:
                module.quantized = False
            parameters = modules[name].weight.numel()
            costs.append(LayerCost(name, layer_bits[name], parameters, sqnr, 1.0 - kept))
    finally:
        set_quantized(net, True)
    return costs
