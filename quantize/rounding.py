"""Learned rounding of the weights by second-order error feedback (GPTQ, after OBQ).

Rounding every weight to its nearest code treats the errors as independent, but a layer's
output sums them. GPTQ quantizes one input column at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of the
layer's squared output error, ``H = X Xᵀ`` over the calibration inputs ``X``.

Layers are taken in forward order, each one's inputs read from the network with every
earlier layer already quantized (weights and activations). The target is the fp32
network's output of the layer, not the quantized input times the fp32 weights: where the
layer sees enough samples, its weights are first refitted by least squares to map the
quantized input onto the fp32 output (which lets 8-bit weights absorb most of a 4-bit
activation's error), their per-channel scales widened to span the refit, and only then
rounded. Columns go in descending Hessian diagonal ("act order"). Depthwise convolutions
are one small problem per channel, solved as a batch.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .calibrate import chunks
from .simulated import QuantLayer, SimConv, SimNet, set_quantized

log = logging.getLogger(__name__)

ROUNDINGS = ("auto", "nearest", "gptq")  # auto: GPTQ where a layer has LEARNED_BITS or fewer
LEARNED_BITS = 6
DAMPING = 0.01  # of the mean Hessian diagonal, added to the diagonal
BLOCK = 128  # columns updated lazily together
REFIT_SAMPLES = 16  # samples per weight of a row needed before the weights are refitted


class _Captured(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def learned_layers(rounding: str, layer_bits: dict[str, tuple[int, int]]) -> list[str]:
    """The layers whose weights ``rounding`` rounds by GPTQ: under "auto", those with
    weights or the activation they read at LEARNED_BITS or fewer."""
    if rounding == "nearest":
        return []
    if rounding == "gptq":
        return list(layer_bits)
    return [name for name, bits in layer_bits.items() if min(bits) <= LEARNED_BITS]


def gptq_round(
    net: SimNet,
    batches: list[torch.Tensor],
    layers: list[str],
    quiet: bool,
    device: str = "cpu",
) -> dict:
    """GPTQ for ``layers`` (forward order) of a calibrated ``net`` whose weights already
    hold their scales; the record: per layer, the output error it saves.

    Each layer's target is its fp32 output: with its input quantized as the network
    quantizes it (``X_q``) and the fp32 network's input (``X``), the weights are first
    refitted to ``W' = W X X_qᵀ (X_q X_qᵀ)⁻¹`` (least squares), so they also absorb the
    error of the activations they read, then rounded by GPTQ on ``X_q X_qᵀ``."""
    wanted = set(layers)
    net.to(device)
    quantized = [piece.to(device) for piece in chunks(batches)]
    reference = [piece.clone() for piece in quantized]
    saved = {}
    with (
        torch.inference_mode(),
        tqdm(total=len(layers), desc="learned rounding (GPTQ)", unit="layer", disable=quiet) as bar,
    ):
        for stage_name, stage in net.stages():
            for name, layer in _layers_in(stage, stage_name):
                if name in wanted:
                    statistics = _statistics(stage, layer, quantized, reference)
                    saved[name] = _round_layer(layer, *statistics)
                    bar.update(1)
            quantized = _run(stage, quantized, True)
            reference = _run(stage, reference, False)
    set_quantized(net, True)
    net.to("cpu")
    return {"images": sum(len(b) for b in batches), "output_error_ratio": saved}


def _run(stage: torch.nn.Module, states: list[torch.Tensor], quantized: bool):
    set_quantized(stage, quantized)
    return [stage(x) for x in states]


def _layers_in(stage: torch.nn.Module, stage_name: str) -> list[tuple[str, QuantLayer]]:
    prefix = f"{stage_name}." if stage_name else ""
    found = [(prefix + n if n else stage_name, m) for n, m in stage.named_modules()]
    return [(name, module) for name, module in found if isinstance(module, QuantLayer)]


def _statistics(stage, layer: QuantLayer, quantized: list, reference: list):
    """``(X_q X_qᵀ, X X_qᵀ, X Xᵀ)`` per group [G, K, K] (float64) of ``layer``'s inputs
    within ``stage``: ``X_q`` quantized as the network runs, ``X`` in fp32."""
    sums, samples = None, 0
    for q_state, fp_state in zip(quantized, reference, strict=True):
        q_columns = _capture(stage, layer, q_state, True).transpose(1, 2)
        fp_columns = _capture(stage, layer, fp_state, False)
        parts = (q_columns.transpose(1, 2) @ q_columns, fp_columns @ q_columns)
        parts += (fp_columns @ fp_columns.transpose(1, 2),)
        sums = parts if sums is None else tuple(a + b for a, b in zip(sums, parts, strict=True))
        samples += q_columns.shape[1]
    return (*sums, samples)


def _capture(stage, layer: QuantLayer, x: torch.Tensor, quantized: bool) -> torch.Tensor:
    """``layer``'s input columns [G, K, M] when ``stage`` runs ``x``."""
    found = []

    def capture(_module, inputs):
        found.append(_columns(layer, inputs[0]))
        raise _Captured

    set_quantized(stage, quantized)
    handle = layer.register_forward_pre_hook(capture)
    try:
        stage(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return found[0]


def _columns(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the columns its weight rows multiply: [groups, K, M]."""
    x = x.double()
    if not isinstance(layer, SimConv):  # a linear layer: [N, K]
        return x.t()[None]
    kernel = layer.weight.shape[-1]
    if layer.padding == "same":
        x = F.pad(x, layer.same_pads(x))
    elif layer.padding:
        x = F.pad(x, (layer.padding,) * 4)
    unfolded = F.unfold(x, kernel, stride=layer.stride)  # [N, C*k*k, L]
    groups = layer.groups
    n, k, length = unfolded.shape
    grouped = unfolded.view(n, groups, k // groups, length).permute(1, 2, 0, 3)
    return grouped.reshape(groups, k // groups, n * length)


def _round_layer(layer: QuantLayer, hessian, cross, fp_hessian, samples: int) -> float:
    """Replace ``layer.weight_q`` (and its scales) by the rounding whose output on the
    calibration inputs is closest to fp32's: GPTQ's codes for the refitted weights, for the
    weights themselves, or nearest rounding. The error kept, relative to nearest rounding's
    (1.0: nearest stayed)."""
    groups = hessian.shape[0]
    weight = layer.weight.double().to(hessian.device)
    shape = weight.shape
    rows = weight.reshape(groups, shape[0] // groups, -1)  # [G, R, K]
    qmax = 2 ** (layer.weight_bits - 1) - 1
    scale = layer.weight_scale.double().to(hessian.device).reshape(groups, -1)
    nearest = torch.round(rows / scale[..., None]).clamp(-qmax, qmax) * scale[..., None]
    candidates = [(nearest, scale), (gptq(rows, hessian, scale, qmax), scale)]
    # Refitting K weights per row needs well over K samples, or it fits the calibration
    # images' noise (the classifier sees one sample per image).
    if samples >= REFIT_SAMPLES * rows.shape[-1]:
        target = _refit(rows, hessian, cross)
        wider = _rescale(target, scale, rows)
        candidates.append((gptq(target, hessian, wider, qmax), wider))
    errors = [_fp32_error(rows, q, hessian, cross, fp_hessian) for q, _ in candidates]
    best = errors.index(min(errors))
    chosen, chosen_scale = candidates[best]
    layer.weight_scale = chosen_scale.reshape(-1).float().to(layer.weight.device)
    layer.weight_q = chosen.reshape(shape).float().to(layer.weight.device)
    return round(errors[best] / max(errors[0], 1e-300), 4)


def _refit(rows: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """The weights ``W'`` minimising ``‖W X − W' X_q‖² + λ‖W' − W‖²``:
    ``(W C + λW)(H + λI)⁻¹`` with C = X X_qᵀ, H = X_q X_qᵀ (λ: DAMPING of H's mean
    diagonal), so too few samples pull the refit back to the fp32 weights, not to zero."""
    damped = hessian.clone()
    mean = torch.diagonal(hessian, dim1=1, dim2=2).mean(1).clamp_min(1e-12)
    damping = (DAMPING * mean)[:, None, None]
    damped.diagonal(dim1=1, dim2=2).add_(damping[..., 0])
    pulled = rows @ cross + damping * rows  # [G, R, K]
    # pulled H⁻¹ = (H⁻¹ pulledᵀ)ᵀ, H symmetric
    return torch.linalg.solve(damped, pulled.transpose(1, 2)).transpose(1, 2)


def _rescale(target: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Each row's scale grown by as much as refitting grew its largest weight, so the
    grid still spans it (the clip chosen for the fp32 weights, kept relative)."""
    grown = target.abs().amax(-1) / rows.abs().amax(-1).clamp_min(1e-12)
    return scale * grown.clamp_min(1.0)


def _fp32_error(rows, candidate, hessian, cross, fp_hessian) -> float:
    """Σ over rows of ‖W X − Q X_q‖² = tr(W X Xᵀ Wᵀ) − 2 tr(W C Qᵀ) + tr(Q H Qᵀ), with
    ``cross`` C = X X_qᵀ and ``hessian`` H = X_q X_qᵀ."""
    reference = torch.einsum("grk,gkl,grl->", rows, fp_hessian, rows)
    fit = torch.einsum("grk,gkl,grl->", candidate, hessian, candidate)
    return float(reference + fit - 2 * torch.einsum("grk,gkl,grl->", rows, cross, candidate))


def gptq(rows: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, qmax: int):
    """GPTQ's quantized ``rows`` [G, R, K] given ``hessian`` [G, K, K] and per-row
    ``scale`` [G, R] of a symmetric grid with codes in [-qmax, qmax] (float64)."""
    groups, _, width = rows.shape
    diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
    dead = diagonal == 0  # inputs that are always zero: any weight there is free
    order = torch.argsort(diagonal + dead * -1.0, dim=1, descending=True)
    inverse = torch.argsort(order, dim=1)
    w = torch.gather(rows.masked_fill(dead[:, None, :], 0.0), 2, _expand(order, rows))
    h = _permuted(hessian, order)
    h.diagonal(dim1=1, dim2=2).add_(dead.gather(1, order).double())
    upper = _inverse_cholesky(h)
    s = scale[..., None]
    quantized = torch.empty_like(w)
    for start in range(0, width, BLOCK):
        stop = min(start + BLOCK, width)
        block = w[:, :, start:stop].clone()
        errors = torch.empty_like(block)
        for i in range(stop - start):
            column = block[:, :, i : i + 1]
            q = torch.round(column / s).clamp(-qmax, qmax) * s
            quantized[:, :, start + i : start + i + 1] = q
            d = upper[:, start + i, start + i][:, None, None]
            error = (column - q) / d
            block[:, :, i:] -= error * upper[:, None, start + i, start + i : stop]
            errors[:, :, i : i + 1] = error
        w[:, :, stop:] -= errors @ upper[:, start:stop, stop:]
    return torch.gather(quantized, 2, _expand(inverse, rows))


def _expand(index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return index[:, None, :].expand(rows.shape)


def _permuted(hessian: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    groups = torch.arange(hessian.shape[0], device=hessian.device)[:, None, None]
    return hessian[groups, order[:, :, None], order[:, None, :]].clone()


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of H⁻¹, H damped by DAMPING (more if it is not positive
    definite in float64)."""
    mean = torch.diagonal(h, dim1=1, dim2=2).mean(1).clamp_min(1e-12)
    for damping in (DAMPING, 0.1, 1.0):
        damped = h.clone()
        damped.diagonal(dim1=1, dim2=2).add_(damping * mean[:, None])
        factor, info = torch.linalg.cholesky_ex(damped)
        if not bool(info.any()):
            inverse = torch.cholesky_inverse(factor)
            return torch.linalg.cholesky(inverse, upper=True)
    raise RuntimeError("GPTQ: the layer's Hessian is not positive definite even damped")
