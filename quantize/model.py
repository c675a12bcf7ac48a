"""``quantize_model``: the steps of post-training quantization in order, and its record."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import UserError

from .architectures import architecture_of, build_simulated
from .calibrate import BIAS_CORRECTION_IMAGES, assign_ranges, correct_biases, observe_ranges
from .equalize import equalize as equalize_layers
from .layer_bits import bits_names, parse_layer_bits
from .mixed import Goal, plan_mixed_precision
from .rounding import ROUNDINGS, gptq_round, learned_layers
from .scheme import DEFAULT_METHOD, QuantScheme, check_method, parse_scheme
from .sensitivity import LayerCost, layer_costs
from .simulated import set_quantized
from .store import calibration_key, load_calibration, save_calibration, store_path
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
    mixed_precision: bool = False,
    bit_budget: float | None = None,
    target_agreement: float = 0.98,
    device: str = "cpu",
    store: str | Path | None = None,
    quiet: bool = False,
) -> nn.Module:
    """A quantized copy of ``model`` (left untouched), with ``quantization_record``.

    ``layer_bits``: a ``--layer-bits`` SPEC (text or its parsed map) over a simulated
    scheme. ``rounding``: "auto" (GPTQ where a layer's weights or the activation it reads
    have LEARNED_BITS or fewer), "gptq" or "nearest". ``mixed_precision``: raise layers to
    8 bits until ``target_agreement`` with fp32 on the calibration images, or (with
    ``bit_budget``) the best agreement at that mean weight width (``quantize.mixed``).
    ``device``: where learned rounding computes (the result is on the CPU). ``store``: a
    folder keeping calibrations, reused when nothing they depend on changed."""
    architecture_of(model)  # a UserError for any other module, before any work
    parsed = parse_scheme(scheme)
    spec = layer_spec(layer_bits, parsed)
    choices = Choices(method, equalize, bias_correction, check_rounding(rounding), device, quiet)
    goal = mixed_goal(parsed, mixed_precision, bit_budget, target_agreement)
    started = time.perf_counter()
    batches = collect_batches(calibration)
    net, record = _calibrated(model, batches, Recipe(parsed, spec, choices, goal), store, started)
    quantized = _back_end(net, parsed)
    quantized.quantization_record = record
    log.info(
        "quantized %s to %s in %.1f s",
        type(model).__name__,
        parsed.name,
        time.perf_counter() - started,
    )
    return quantized.eval()


@dataclass(frozen=True)
class Recipe:
    """Everything a calibration is made with, beside the model and the images."""

    scheme: QuantScheme
    spec: dict[str, str] | None
    choices: Choices
    goal: Goal | None

    def key_options(self) -> dict:
        """What the calibration store keys on (not ``quiet``: it changes no number)."""
        choices = {k: v for k, v in dataclasses.asdict(self.choices).items() if k != "quiet"}
        goal = None if self.goal is None else dataclasses.asdict(self.goal)
        return {"scheme": self.scheme.name, "layer_bits": self.spec, **choices, "goal": goal}


def mixed_goal(parsed: QuantScheme, mixed: bool, budget, target: float) -> Goal | None:
    """The mixed-precision goal (None without ``mixed``); one sentence for a scheme with
    nothing to raise, a budget without a plan or outside the scheme's widths."""
    if not mixed:
        if budget is not None:
            raise UserError("--bit-budget is the size of a --mixed-precision plan: give both")
        return None
    if not parsed.simulated or min(parsed.weight_bits, parsed.activation_bits) >= 8:
        raise UserError(
            f"--mixed-precision raises low-bit layers to 8 bits, and {parsed.name} runs every "
            "layer at 8 bits or more already: give a scheme such as w4a8"
        )
    if budget is not None and not parsed.weight_bits <= budget <= 8:
        raise UserError(
            f"--bit-budget {budget:g} is outside {parsed.name}'s {parsed.weight_bits} to 8 "
            "mean weight bits"
        )
    return Goal(float(target), None if budget is None else float(budget))


def _calibrated(model, batches, recipe: Recipe, store, started: float):
    """The calibrated SimNet and its record: from ``store`` when it holds this very
    calibration, else calibrated now (and kept there)."""
    path = key = None
    if store is not None:
        key = calibration_key(model, batches, recipe.key_options())
        path = store_path(store, key)
        net = build_simulated(copy.deepcopy(model).to("cpu").eval()).eval()
        record = load_calibration(path, key, net)
        if record is not None:
            log.info("reusing the calibration in %s", path)
            return net, {**record, "calibration_file": str(path), "reused": True}
    choices = recipe.choices

    def calibrate(spec, images):
        return calibrated_net(model, images, recipe.scheme, spec, choices)

    if recipe.goal is None:
        net, widths, techniques, findings = calibrate(recipe.spec, batches)
    else:
        calibrated, plan = plan_mixed_precision(
            calibrate, batches, recipe.spec, recipe.goal, choices.quiet
        )
        net, widths, techniques, findings = calibrated
        findings = {**findings, "mixed_precision": plan}
    record = _quantization_record(
        recipe.scheme, widths, choices, batches, techniques, findings, started
    )
    if path is not None and save_calibration(path, key, net, record):
        record = {**record, "calibration_file": str(path), "reused": False}
    return net, record


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
