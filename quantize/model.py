"""``quantize_model``: the steps of post-training quantization in order, and its record."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable

import torch
from torch import nn

from core.errors import UserError

from .architectures import architecture_of, build_simulated
from .calibrate import BIAS_CORRECTION_IMAGES, assign_ranges, correct_biases, observe_ranges
from .equalize import equalize as equalize_layers
from .scheme import DEFAULT_METHOD, QuantScheme, check_method, parse_scheme
from .simulated import set_quantized

log = logging.getLogger(__name__)

LOW_WEIGHT_BITS = 8  # below this, each weight channel's clip is searched (least MSE)


def _collect(calibration: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    batches = []
    for batch in calibration:  # once: it may be a generator
        batch = torch.as_tensor(batch)
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise UserError(
                f"calibration batches must be NCHW float32 images, not shape {tuple(batch.shape)}"
            )
        if len(batch):
            batches.append(batch.detach().to("cpu", torch.float32).contiguous())
    if not batches:
        raise UserError("--quantize needs calibration images, and the calibration set is empty")
    return batches


def quantize_model(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    scheme: str = "int8",
    *,
    method: str = DEFAULT_METHOD,
    equalize: bool = False,
    bias_correction: bool = True,
    quiet: bool = False,
) -> nn.Module:
    """A quantized copy of ``model`` (left untouched), with ``quantization_record``."""
    architecture_of(model)  # a UserError for any other module, before any work
    parsed = parse_scheme(scheme)
    check_method(method)
    started = time.perf_counter()
    batches = _collect(calibration)
    images = sum(len(batch) for batch in batches)
    source = copy.deepcopy(model).to("cpu").eval()
    net = build_simulated(source).eval()
    techniques, findings = _apply_techniques(
        net,
        batches,
        parsed,
        method=method,
        equalize=equalize,
        bias_correction=bias_correction,
        quiet=quiet,
    )
    quantized = _back_end(net, parsed)
    quantized.quantization_record = _quantization_record(
        parsed, method, images, techniques, findings, started
    )
    log.info(
        "quantized %s to %s in %.1f s",
        type(model).__name__,
        parsed.name,
        time.perf_counter() - started,
    )
    return quantized.eval()


def _clips_weights_by_mse(parsed: QuantScheme) -> bool:
    """Whether each weight channel's clip is searched (least MSE) rather than its max |w|."""
    return parsed.weight_bits < LOW_WEIGHT_BITS


def _apply_techniques(
    net,
    batches: list[torch.Tensor],
    parsed: QuantScheme,
    *,
    method: str,
    equalize: bool,
    bias_correction: bool,
    quiet: bool,
) -> tuple[list[str], dict]:
    """Quantize ``net`` in place: the names of the techniques applied, and what they found.

    The order matters: equalization, then activation ranges, weight quantization and last
    bias correction. The findings' keys keep that order in ``quantization_record``.
    """
    techniques = ["batch-norm folding"]
    findings: dict = {}
    if equalize:
        findings["equalization"] = equalize_layers(net)
        techniques.append("cross-layer equalization")
    observe_ranges(net, batches, quiet)
    findings["activation_ranges"] = assign_ranges(net, method, parsed.activation_bits)
    mse_clip = _clips_weights_by_mse(parsed)
    findings["weight_clipping"] = _quantize_weights(net, parsed.weight_bits, mse_clip)
    if mse_clip:
        techniques.append("per-channel MSE weight clipping")
    set_quantized(net, True)
    if bias_correction:
        findings["bias_correction"] = correct_biases(net, batches, quiet, BIAS_CORRECTION_IMAGES)
        techniques.append("bias correction")
    set_quantized(net, True)
    return techniques, findings


def _quantize_weights(net, weight_bits: int, mse_clip: bool) -> dict[str, float]:
    """Quantize every layer's weights; with ``mse_clip``, each layer's clipped share."""
    clipping: dict[str, float] = {}
    for name, layer in net.layers():
        info = layer.quantize_weight(weight_bits, mse_clip)
        if mse_clip:
            clipping[name] = info["clipped_share"]
    return clipping


def _quantization_record(
    parsed: QuantScheme,
    method: str,
    images: int,
    techniques: list[str],
    findings: dict,
    started: float,
) -> dict:
    """The ``quantization_record`` of a model quantized since ``started`` (perf_counter)."""
    mse_clip = _clips_weights_by_mse(parsed)
    return {
        "scheme": parsed.name,
        "weight_bits": parsed.weight_bits,
        "activation_bits": parsed.activation_bits,
        "kernels": parsed.kernels,
        "weights": "per output channel, symmetric"
        + (
            ", clip per channel by least squared error" if mse_clip else ", range [-max|w|, max|w|]"
        ),
        "activations": "per tensor, asymmetric (unsigned, zero point 0, after ReLU/ReLU6); "
        f"network input by min/max, the rest by {method}; logits stay float32",
        "calibration_method": method,
        "calibration_images": images,
        "techniques": techniques,
        "seconds": round(time.perf_counter() - started, 1),
        **findings,
    }


def _back_end(net, parsed: QuantScheme) -> nn.Module:
    if parsed.simulated:
        return net
    from .onednn import Int8Net

    return Int8Net(net)
