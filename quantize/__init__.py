"""Post-training quantization of the converted MobileNet-v1 and ResNet-50 v1.5.

Public API::

    SCHEMES, CALIBRATION_METHODS, DEFAULT_METHOD
    parse_scheme(text) -> QuantScheme
    quantize_model(model, calibration, scheme="int8", *, method=DEFAULT_METHOD,
                   equalize=False, bias_correction=True, quiet=False) -> nn.Module

Steps: batch norm folded into the convolutions; cross-layer equalization; activation
ranges per tensor from histograms of the calibration batches; weights symmetric per output
channel; empirical bias correction. One set of scales feeds both back ends: "int8" runs
oneDNN's int8 kernels on the CPU; "w<b>a<b>" fake-quantizes in float32 on any device.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable

import torch
from torch import nn

from convert.models.mobilenet_v1 import MobileNetV1
from convert.models.resnet import ResNet50
from core.errors import UserError

from .calibrate import BIAS_CORRECTION_IMAGES, assign_ranges, correct_biases, observe_ranges
from .equalize import equalize as equalize_layers
from .observers import CALIBRATION_METHODS, check_method
from .scheme import SCHEMES, QuantScheme, parse_scheme
from .simulated import build_simulated, set_quantized

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_METHOD",
    "SCHEMES",
    "QuantScheme",
    "parse_scheme",
    "quantize_model",
]

log = logging.getLogger(__name__)

DEFAULT_METHOD = "percentile"
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
    if not isinstance(model, (MobileNetV1, ResNet50)):
        raise UserError(
            "--quantize supports the converted MobileNetV1 and ResNet50 modules, "
            f"not {type(model).__name__}"
        )
    parsed = parse_scheme(scheme)
    check_method(method)
    started = time.perf_counter()
    batches = _collect(calibration)
    images = sum(len(batch) for batch in batches)
    source = copy.deepcopy(model).to("cpu").eval()
    net = build_simulated(source).eval()
    techniques = ["batch-norm folding"]
    record: dict = {}
    if equalize:
        record["equalization"] = equalize_layers(net)
        techniques.append("cross-layer equalization")
    observe_ranges(net, batches, quiet)
    record["activation_ranges"] = assign_ranges(net, method, parsed.activation_bits)
    mse_clip = parsed.weight_bits < LOW_WEIGHT_BITS
    record["weight_clipping"] = {}
    for name, layer in net.layers():
        info = layer.quantize_weight(parsed.weight_bits, mse_clip)
        if mse_clip:
            record["weight_clipping"][name] = info["clipped_share"]
    if mse_clip:
        techniques.append("per-channel MSE weight clipping")
    set_quantized(net, True)
    if bias_correction:
        record["bias_correction"] = correct_biases(net, batches, quiet, BIAS_CORRECTION_IMAGES)
        techniques.append("bias correction")
    set_quantized(net, True)
    quantized = _back_end(net, parsed)
    quantized.quantization_record = {
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
        **record,
    }
    log.info(
        "quantized %s to %s in %.1f s",
        type(model).__name__,
        parsed.name,
        time.perf_counter() - started,
    )
    return quantized.eval()


def _back_end(net, parsed: QuantScheme) -> nn.Module:
    if parsed.simulated:
        return net
    from .onednn import Int8Net

    return Int8Net(net)
