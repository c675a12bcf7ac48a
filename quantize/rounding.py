"""Learned rounding of the weights by second-order error feedback (GPTQ, after OBQ).

Rounding every weight to its nearest code treats the errors as independent, but a layer's
output sums them. GPTQ quantizes one input column at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of the
layer's squared output error, ``H = X Xᵀ`` over the calibration inputs ``X``. The scales stay
the ones chosen before (per output channel); only which code each weight takes changes.

Layers are taken in forward order, each one's inputs read from the network with every
earlier layer already quantized (weights and activations), so a layer also makes up for
the error that reaches it. Columns go in descending Hessian diagonal ("act order").
Depthwise convolutions are one small problem per channel, solved as a batch.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .calibrate import chunks
from .simulated import QuantLayer, SimConv, SimNet, set_quantized

log = logging.getLogger(__name__)

ROUNDINGS = ("auto", "nearest", "gptq")  # auto: GPTQ for layers at LEARNED_BITS or fewer
LEARNED_BITS = 6
DAMPING = 0.01  # of the mean Hessian diagonal, added to the diagonal
BLOCK = 128  # columns updated lazily together


class _Captured(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def learned_layers(rounding: str, weight_bits: dict[str, int]) -> list[str]:
    """The layers whose weights ``rounding`` rounds by GPTQ."""
    if rounding == "nearest":
        return []
    if rounding == "gptq":
        return list(weight_bits)
    return [name for name, bits in weight_bits.items() if bits <= LEARNED_BITS]


def gptq_round(
    net: SimNet,
    batches: list[torch.Tensor],
    layers: list[str],
    quiet: bool,
    device: str = "cpu",
) -> dict:
    """GPTQ for ``layers`` (forward order) of a calibrated ``net`` whose weights already
    hold their scales; the record: per layer, the output error it saves."""
    wanted = set(layers)
    net.to(device)
    set_quantized(net, True)
    states = [piece.to(device) for piece in chunks(batches)]
    saved = {}
    with (
        torch.inference_mode(),
        tqdm(total=len(layers), desc="learned rounding (GPTQ)", unit="layer", disable=quiet) as bar,
    ):
        for stage_name, stage in net.stages():
            for name, layer in _layers_in(stage, stage_name):
                if name in wanted:
                    hessian = _hessian(stage, layer, states)
                    saved[name] = _round_layer(layer, hessian)
                    bar.update(1)
            states = [stage(x) for x in states]
    net.to("cpu")
    return {"images": sum(len(b) for b in batches), "output_error_ratio": saved}


def _layers_in(stage: torch.nn.Module, stage_name: str) -> list[tuple[str, QuantLayer]]:
    prefix = f"{stage_name}." if stage_name else ""
    found = [(prefix + n if n else stage_name, m) for n, m in stage.named_modules()]
    return [(name, module) for name, module in found if isinstance(module, QuantLayer)]


def _hessian(stage: torch.nn.Module, layer: QuantLayer, states: list[torch.Tensor]):
    """``X Xᵀ`` per group [G, K, K] (float64) of ``layer``'s inputs within ``stage``."""
    total = None

    def capture(_module, inputs):
        nonlocal total
        columns = _columns(layer, inputs[0])  # [G, K, M]
        part = columns @ columns.transpose(1, 2)
        total = part if total is None else total + part
        raise _Captured

    handle = layer.register_forward_pre_hook(capture)
    try:
        for x in states:
            try:
                stage(x)
            except _Captured:
                pass
    finally:
        handle.remove()
    return total


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


def _round_layer(layer: QuantLayer, hessian: torch.Tensor) -> float:
    """Replace ``layer.weight_q`` by GPTQ's codes; the output error it keeps, relative to
    nearest rounding's (below 1: better), measured on the Hessian."""
    groups = hessian.shape[0]
    weight = layer.weight.double().to(hessian.device)
    shape = weight.shape
    rows = weight.reshape(groups, shape[0] // groups, -1)  # [G, R, K]
    scale = layer.weight_scale.double().to(hessian.device).reshape(groups, -1)
    qmax = 2 ** (layer.weight_bits - 1) - 1
    learned = gptq(rows, hessian, scale, qmax)
    nearest = torch.round(rows / scale[..., None]).clamp(-qmax, qmax) * scale[..., None]
    nearest_error = max(_output_error(rows - nearest, hessian), 1e-300)
    ratio = _output_error(rows - learned, hessian) / nearest_error
    layer.weight_q = learned.reshape(shape).float().to(layer.weight.device)
    return round(ratio, 4)


def _output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """Σ over rows of δ H δᵀ: the squared output error of a weight change ``delta``."""
    return float(torch.einsum("grk,gkl,grl->", delta, hessian, delta))


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
