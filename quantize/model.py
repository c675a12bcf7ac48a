"""``quantize_model``: the steps of post-training quantization in order, and its record."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import UserError

from .architectures import architecture_of, build_simulated
from .calibrate import BIAS_CORRECTION_IMAGES, assign_ranges, correct_biases, observe_ranges
from .equalize import equalize as equalize_layers
from .layer_bits import bits_names, parse_layer_bits
from .rounding import ROUNDINGS, gptq_round, learned_layers
from .scheme import DEFAULT_METHOD, QuantScheme, check_method, parse_scheme
from .sensitivity import LayerCost, layer_costs
from .simulated import set_quantized
from .wiring import Widths, plan_widths

log = logging.getLogger(__name__)

LOW_WEIGHT_BITS = 8  # below this, each weight channel's clip is searched (least MSE)


def collect_batches(calibration: Iterable[torch.Tensor]) -> list[torch.Tensor]:
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
    rounding: str = "auto",
    layer_bits: str | dict[str, str] | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> nn.Module:
    """A quantized copy of ``model`` (left untouched), with ``quantization_record``.

    ``layer_bits``: a ``--layer-bits`` SPEC (text or its parsed map) over a simulated
    scheme. ``rounding``: "auto" (GPTQ where a layer's weights or the activation it reads
    have LEARNED_BITS or fewer), "gptq" or "nearest". ``device``: where learned rounding
    computes (the result is on the CPU)."""
    architecture_of(model)  # a UserError for any other module, before any work
    parsed = parse_scheme(scheme)
    spec = layer_spec(layer_bits, parsed)
    choices = Choices(method, equalize, bias_correction, check_rounding(rounding), device, quiet)
    started = time.perf_counter()
    batches = collect_batches(calibration)
    net, widths, techniques, findings = calibrated_net(model, batches, parsed, spec, choices)
    quantized = _back_end(net, parsed)
    quantized.quantization_record = _quantization_record(
        parsed, widths, choices, batches, techniques, findings, started
    )
    log.info(
        "quantized %s to %s in %.1f s",
        type(model).__name__,
        parsed.name,
        time.perf_counter() - started,
    )
    return quantized.eval()


def calibrated_net(model: nn.Module, batches, parsed: QuantScheme, spec, choices: Choices):
    """``(SimNet, Widths, techniques, findings)``: a copy of fp32 ``model`` quantized (in
    simulation, quantization on) at ``parsed`` with the ``--layer-bits`` map ``spec``."""
    architecture_of(model)  # a UserError for any other module, before any work
    check_method(choices.method)
    source = copy.deepcopy(model).to("cpu").eval()
    net = build_simulated(source).eval()
    widths = plan_widths(net, parsed, spec)
    techniques, findings = _apply_techniques(net, batches, widths, choices)
    return net, widths, techniques, findings


def layer_sensitivity(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    scheme: str,
    *,
    method: str = DEFAULT_METHOD,
    equalize: bool = False,
    bias_correction: bool = True,
    rounding: str = "auto",
    layer_bits: str | dict[str, str] | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> tuple[list[LayerCost], dict]:
    """Each layer of ``model`` quantized alone at its width under ``scheme`` (the recipe
    of ``quantize_model``, the rest fp32), measured on the calibration images only: the
    costs in forward order and the record of the calibration they come from."""
    architecture_of(model)
    parsed = parse_scheme(scheme)
    spec = layer_spec(layer_bits, parsed)
    choices = Choices(method, equalize, bias_correction, check_rounding(rounding), device, quiet)
    started = time.perf_counter()
    batches = collect_batches(calibration)
    net, widths, techniques, findings = calibrated_net(model, batches, parsed, spec, choices)
    record = _quantization_record(parsed, widths, choices, batches, techniques, findings, started)
    return layer_costs(net, batches, widths.layers, quiet), record


@dataclass(frozen=True)
class Choices:
    """The recipe's switches, as quantize_model was given them."""

    method: str
    equalize: bool
    bias_correction: bool
    rounding: str
    device: str
    quiet: bool


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise UserError(f"rounding {rounding!r} is unknown: use one of {', '.join(ROUNDINGS)}")
    return rounding


def layer_spec(layer_bits, parsed: QuantScheme) -> dict[str, str] | None:
    """The parsed ``--layer-bits`` map (None without one); refused over the int8 kernels,
    which run 8 bits everywhere."""
    if layer_bits is None:
        return None
    if not parsed.simulated:
        raise UserError(
            "--layer-bits needs a simulated --quantize wXaY (such as w4a8): the int8 "
            "kernels run every layer at 8 bits"
        )
    return parse_layer_bits(layer_bits) if isinstance(layer_bits, str) else dict(layer_bits)


def _apply_techniques(net, batches: list[torch.Tensor], widths: Widths, choices: Choices):
    """Quantize ``net`` in place: the names of the techniques applied, and what they found.

    The order matters: equalization, then activation ranges, weight quantization (scales,
    then learned rounding) and last bias correction. The findings' keys keep that order
    in ``quantization_record``.
    """
    techniques = ["batch-norm folding"]
    findings: dict = {}
    if choices.equalize:
        findings["equalization"] = equalize_layers(net)
        techniques.append("cross-layer equalization")
    observe_ranges(net, batches, choices.quiet)
    findings["activation_ranges"] = assign_ranges(net, choices.method, widths.quantizers)
    findings["weight_clipping"] = _quantize_weights(net, widths)
    if findings["weight_clipping"]:
        techniques.append("per-channel MSE weight clipping")
    learned = learned_layers(choices.rounding, widths.layers)
    if learned:
        findings["learned_rounding"] = {
            "method": "GPTQ (second-order error feedback, act order) on weights refitted "
            "to the fp32 output",
            "layers": learned,
            **gptq_round(net, batches, learned, choices.quiet, choices.device),
        }
        techniques.append("learned rounding (GPTQ)")
    set_quantized(net, True)
    if choices.bias_correction:
        findings["bias_correction"] = correct_biases(
            net, batches, choices.quiet, BIAS_CORRECTION_IMAGES
        )
        techniques.append("bias correction")
    set_quantized(net, True)
    return techniques, findings


def _quantize_weights(net, widths: Widths) -> dict[str, float]:
    """Quantize every layer's weights at its width; below LOW_WEIGHT_BITS each channel's
    clip is searched (least MSE): those layers' clipped shares."""
    clipping: dict[str, float] = {}
    for name, layer in net.layers():
        bits = widths.layers[name][0]
        info = layer.quantize_weight(bits, bits < LOW_WEIGHT_BITS)
        if bits < LOW_WEIGHT_BITS:
            clipping[name] = info["clipped_share"]
    return clipping


def _quantization_record(
    parsed: QuantScheme,
    widths: Widths,
    choices: Choices,
    batches: list[torch.Tensor],
    techniques: list[str],
    findings: dict,
    started: float,
) -> dict:
    """The ``quantization_record`` of a model quantized since ``started`` (perf_counter)."""
    method = choices.method
    images = sum(len(batch) for batch in batches)
    return {
        "scheme": parsed.name,
        "weight_bits": parsed.weight_bits,
        "activation_bits": parsed.activation_bits,
        "layer_bits": bits_names(widths.layers),
        "weight_bits_mean": round(widths.weight_bits_mean, 4),
        "input_bits": widths.quantizers["input_quant"],
        "kernels": parsed.kernels,
        "weights": "per output channel, symmetric; below "
        f"{LOW_WEIGHT_BITS} bits each channel's clip by least squared error, else "
        "[-max|w|, max|w|]",
        "activations": "per tensor, asymmetric (unsigned, zero point 0, after ReLU/ReLU6); "
        f"network input by min/max, the rest by {method}; logits stay float32",
        "calibration_method": method,
        "rounding": choices.rounding,
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
