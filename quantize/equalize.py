"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization").

For two convolutions in a row, with only a positively homogeneous activation between them,
output channel i of the first is divided by s_i and input channel i of the second
multiplied by s_i, with s_i = sqrt(r1_i * r2_i) / r2_i (r: per-channel weight ranges), so
that both ranges become sqrt(r1_i * r2_i). ReLU commutes with the scaling; ReLU6 does only
if its clip becomes per channel (6 / s_i), which ``SimConv`` keeps (``clip``): the fp32
function is unchanged. Each layer is in up to two pairs, so the pairs are swept until the
scales settle.
"""

from __future__ import annotations

import logging

import torch

from .simulated import QuantLayer, SimConv, SimNet

log = logging.getLogger(__name__)

MAX_SWEEPS = 20  # the scales change little after that
TOLERANCE = 1e-3  # stop when every scale of a sweep is within 0.1 % of 1


def equalization_pairs(net: SimNet) -> list[tuple[str, QuantLayer, str, QuantLayer]]:
    """(name1, layer1, name2, layer2) for each pair joined by ReLU/ReLU6 (and avg pool),
    as the model's row names them."""
    modules = dict(net.named_modules())
    return [(a, modules[a], b, modules[b]) for a, b in net.architecture.equalization_pairs(net)]


def _is_depthwise(layer: QuantLayer) -> bool:
    return isinstance(layer, SimConv) and layer.groups > 1


def _input_ranges(layer: QuantLayer, weight: torch.Tensor) -> torch.Tensor:
    if _is_depthwise(layer):  # depthwise: channel i is weight[i], both in and out
        return weight.abs().reshape(weight.shape[0], -1).amax(1)
    return weight.abs().transpose(0, 1).reshape(weight.shape[1], -1).amax(1)


def _output_ranges(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().reshape(weight.shape[0], -1).amax(1)


def equalize(net: SimNet) -> list[dict]:
    """Equalize ``net`` in place (in float64, written back once); per pair, the spread of
    its total scales."""
    pairs = equalization_pairs(net)
    layers = {id(layer): layer for _, a, _, b in pairs for layer in (a, b)}
    weights = {key: layer.weight.double() for key, layer in layers.items()}
    totals = {
        key: torch.ones(layer.weight.shape[0], dtype=torch.float64) for key, layer in layers.items()
    }  # output-channel divisors so far
    pair_totals = [
        torch.ones(first.weight.shape[0], dtype=torch.float64) for _, first, _, _ in pairs
    ]
    sweeps = 0
    while sweeps < MAX_SWEEPS:
        sweeps += 1
        worst = 0.0
        for index, (_, first, _, second) in enumerate(pairs):
            w1, w2 = weights[id(first)], weights[id(second)]
            r1, r2 = _output_ranges(w1), _input_ranges(second, w2)
            usable = (r1 > 0) & (r2 > 0)
            scale = torch.where(usable, torch.sqrt(r1 / r2.clamp_min(1e-300)), 1.0)
            weights[id(first)] = w1 / scale.view((-1,) + (1,) * (w1.dim() - 1))
            if _is_depthwise(second):
                weights[id(second)] = w2 * scale.view((-1,) + (1,) * (w2.dim() - 1))
            else:
                weights[id(second)] = w2 * scale.view((1, -1) + (1,) * (w2.dim() - 2))
            totals[id(first)] *= scale
            pair_totals[index] *= scale
            worst = max(worst, float(scale.log().abs().max()))
        if worst < TOLERANCE:
            break
    for key, layer in layers.items():
        layer.weight = weights[key].float()
        layer.bias = (layer.bias.double() / totals[key]).float()
        if layer.clip is not None:
            layer.clip = (layer.clip.double() / totals[key]).float()
        layer.bias_q = layer.bias.clone()
        layer.weight_q = layer.weight.clone()
    log.info("cross-layer equalization: %d pairs, %d sweeps", len(pairs), sweeps)
    return [
        {
            "first": a,
            "second": b,
            "scale_min": float(total.min()),
            "scale_max": float(total.max()),
            "sweeps": sweeps,
        }
        for (a, _, b, _), total in zip(pairs, pair_totals, strict=True)
    ]
