"""The method's options: what is applied to the fp32 model (``--transform`` or
``--quantize`` with its choices) and what it calibrates on, for ``python -m eval``,
``python -m eval layers`` and ``python -m pipeline.run``.

Torch-free, so ``--help`` and the checks stay instant: the scheme grammar and the
calibration methods come from ``quantize.scheme`` and the --layer-bits grammar from
``quantize.layer_bits``, not restated here (only the roundings are named again: their
module imports torch). The fields live in
``eval.options.EvalSettings`` (one settings object per evaluation); this module defines,
checks and names them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re

from core.cli import check_choice
from core.errors import UserError
from quantize.layer_bits import parse_layer_bits
from quantize.scheme import CALIBRATION_METHODS, QuantScheme, parse_scheme

# EvalSettings' fields that describe the method; ``unmodified`` resets them.
METHOD_FIELDS = (
    "transform",
    "quantize",
    "calibration_method",
    "equalize",
    "bias_correction",
    "layer_bits",
    "rounding",
    "mixed_precision",
    "bit_budget",
    "calibration_cache",
    "reference",
)
# How --quantize rounds the weights. The authority is quantize.model.check_rounding (over
# quantize.rounding.ROUNDINGS, a module that imports torch, so it is named again here for
# --help and the checks); tests/eval/test_quantize_options.py checks that the two agree.
ROUNDINGS = ("auto", "nearest", "gptq")
# The mixed-precision plan raises a layer to 8 bits at most: a scheme at 8 bits or more
# has nothing to raise, and no budget can be above it.
MIXED_PRECISION_BITS = 8
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """A user's method applied to the fp32 model before it is evaluated (eval.method)."""
    group = parser.add_argument_group(
        "your method (an fp32 run of the same model, weights and images is its reference)"
    )
    what = group.add_mutually_exclusive_group()
    what.add_argument(
        "--transform",
        metavar="SPEC",
        help="path/to/file.py:function or package.module:function, called once as "
        "function(model, calibration) -> the module to evaluate",
    )
    what.add_argument(
        "--quantize",
        metavar="SCHEME",
        help="built-in post-training quantization: int8 (oneDNN int8 kernels, CPU) or a "
        "simulated wXaY such as w8a8, w4a8, w6a6 (fake-quantized in float32)",
    )
    group.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        help="how --quantize sets activation ranges (default: the quantize package's)",
    )
    group.add_argument(
        "--equalization",
        dest="equalize",
        action="store_true",
        help="--quantize with cross-layer equalization (off by default: with per-channel "
        "weights it cost accuracy where measured; see benchmarks/quantization_study.py)",
    )
    group.add_argument(
        "--no-bias-correction",
        dest="bias_correction",
        action="store_false",
        help="--quantize without bias correction (to measure what it adds)",
    )
    add_width_options(group)


def add_width_options(group) -> None:
    """--quantize's per-layer widths and weight rounding."""
    group.add_argument(
        "--layer-bits",
        metavar="SPEC",
        help="per-layer widths over a simulated --quantize wXaY: NAME=wXaY,... (layers of "
        "the converted model, or first and last; e.g. first=w8a8,last=w8a8) or a JSON file "
        "holding that map",
    )
    group.add_argument(
        "--rounding",
        choices=ROUNDINGS,
        default="auto",
        help="how --quantize rounds weights: nearest, gptq (learned, GPTQ) or auto (default: "
        "GPTQ for layers at 6 bits or fewer, nearest above)",
    )
    group.add_argument(
        "--mixed-precision",
        action="store_true",
        help="--quantize wXaY with a per-layer plan: the layers that cost most agreement with "
        "fp32 raised toward 8 bits, aiming at the model's MLPerf ratio (0.99 ResNet-50, "
        "0.98 MobileNet-v1) of fp32's predictions on the calibration images",
    )
    group.add_argument(
        "--bit-budget",
        type=bit_budget,
        metavar="B",
        help="--mixed-precision's most: the mean weight bits (weighted by parameters) the "
        f"plan may spend, from the scheme's weight bits to {MIXED_PRECISION_BITS}",
    )


def bit_budget(text: str) -> float:
    """argparse type for --bit-budget: a number; anything else one sentence (a UserError,
    not argparse's usage), as every other --bit-budget refusal is."""
    try:
        return _budget_value(float(text), text)
    except ValueError:
        return _budget_value(None, text)


def _budget_value(value, shown) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(
            f"--bit-budget {shown!r} is not a number: give the mean weight bits the "
            "--mixed-precision plan may spend, such as 5 or 4.5"
        )
    return float(value)


def layer_bits_digest(layer_bits: dict[str, str]) -> str:
    """sha256 of a parsed --layer-bits map, the same whatever order its layers were given."""
    text = json.dumps(layer_bits, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def split_spec(spec: str) -> tuple[str, str]:
    """``(module or file, function)`` of a --transform; one sentence when ``spec`` is not
    of either form."""
    target, sep, function = spec.rpartition(":")
    if not sep or not target or not _IDENTIFIER.fullmatch(function):
        raise UserError(
            f"--transform {spec!r} is not 'path/to/file.py:function' or 'package.module:function'"
        )
    return target, function


def method_name(settings) -> str | None:
    """The name an evaluation folder carries for ``settings``' method (None without one),
    with a suffix for a --quantize run that leaves the defaults (a calibration method, a
    technique left out, per-layer widths, a rounding, a mixed-precision plan), so such runs
    sit beside the default one instead of over it."""
    if settings.quantize is not None:
        return settings.quantize + _quantize_suffix(settings)
    if settings.transform is not None:
        return split_spec(settings.transform)[1]
    return None


def _quantize_suffix(settings) -> str:
    """``-minmax``, ``-cle``, ``-no-bc``, ``-lb`` and 8 hex digits of the --layer-bits map
    (its content: a JSON file's, not its path), ``-nearest`` or ``-gptq``, and ``-mp`` (with
    the budget: ``-mp5``), in that order."""
    suffix = f"-{settings.calibration_method}" if settings.calibration_method else ""
    suffix += "-cle" if settings.equalize else ""
    suffix += "" if settings.bias_correction else "-no-bc"
    if settings.layer_bits is not None:
        suffix += f"-lb{layer_bits_digest(parse_layer_bits(settings.layer_bits))[:8]}"
    suffix += "" if settings.rounding == "auto" else f"-{settings.rounding}"
    if settings.mixed_precision:
        budget = settings.bit_budget
        suffix += "-mp" + ("" if budget is None else f"{_budget_value(budget, budget):g}")
    return suffix


def unmodified(settings):
    """The same evaluation of the converted model itself: fp32, no method."""
    defaults = {f.name: f.default for f in dataclasses.fields(settings)}
    return dataclasses.replace(
        settings, precision="fp32", **{name: defaults[name] for name in METHOD_FIELDS}
    )


def check_method_settings(settings) -> None:
    """The method options fit together and fit the backend and device: one sentence."""
    given = _quantize_only_given(settings)
    if settings.transform is not None and settings.quantize is not None:
        raise UserError("give --transform or --quantize, not both")
    if settings.reference is not None and not settings.modified:
        raise UserError(
            "--reference names the fp32 run a modified model is judged against: give it "
            "with --transform, --quantize or a --precision other than fp32"
        )
    if settings.transform is None and settings.quantize is None:
        if given:
            raise UserError(f"{given[0]} is for --quantize")
        return
    if settings.backend == "tf":
        raise UserError("--transform and --quantize modify the PyTorch model: use --backend torch")
    if settings.transform is not None:
        split_spec(settings.transform)  # its spelling, before any work
        if given:
            verb = "is" if len(given) == 1 else "are"
            listed = ", ".join(given[:-1]) + " and " + given[-1] if len(given) > 1 else given[0]
            raise UserError(f"{listed} {verb} for --quantize; your transform chooses its own")
        return
    check_quantize_choices(settings)


def _quantize_only_given(settings) -> list[str]:
    """The options for --quantize alone that ``settings`` moves off their defaults."""
    options = (
        (settings.calibration_method is not None, "--calibration-method"),
        (settings.equalize, "--equalization"),
        (not settings.bias_correction, "--no-bias-correction"),
        (settings.layer_bits is not None, "--layer-bits"),
        (settings.rounding != "auto", "--rounding"),
        (settings.mixed_precision, "--mixed-precision"),
        (settings.bit_budget is not None, "--bit-budget"),
    )
    return [option for is_given, option in options if is_given]


def check_quantize_choices(settings) -> None:
    """--quantize's scheme and choices, each refused in one sentence before any work: the
    --layer-bits SPEC is parsed (a JSON file read) here."""
    if settings.calibration_method is not None:
        check_choice("calibration method", settings.calibration_method, CALIBRATION_METHODS)
    check_choice("rounding", settings.rounding, ROUNDINGS)
    check_scheme(settings.quantize, settings.device)
    scheme = parse_scheme(settings.quantize)
    if settings.layer_bits is not None:
        if not scheme.simulated:
            raise UserError(
                "--layer-bits needs a simulated --quantize wXaY (such as w4a8): the int8 "
                "kernels run every layer at 8 bits"
            )
        parse_layer_bits(settings.layer_bits)
    check_mixed_precision(settings, scheme)


def check_mixed_precision(settings, scheme: QuantScheme) -> None:
    """--mixed-precision over a scheme with something to raise, and --bit-budget only with
    it, a number from the scheme's weight bits to MIXED_PRECISION_BITS."""
    budget = settings.bit_budget
    if budget is not None:
        budget = _budget_value(budget, budget)
        if not settings.mixed_precision:
            raise UserError(
                "--bit-budget is the size of a --mixed-precision plan: give it with "
                "--mixed-precision"
            )
    if not settings.mixed_precision:
        return
    top = MIXED_PRECISION_BITS
    if scheme.weight_bits >= top and scheme.activation_bits >= top:
        raise UserError(
            f"--mixed-precision raises layers toward {top} bits, and --quantize {scheme.name} "
            f"runs every layer at {top} bits or more already: give a lower scheme such as w4a8"
        )
    if budget is not None and budget < scheme.weight_bits:
        raise UserError(
            f"--bit-budget {budget:g} is below {scheme.name}'s {scheme.weight_bits} weight "
            "bits: no plan can be that small"
        )
    if budget is not None and budget > top:
        raise UserError(
            f"--bit-budget {budget:g} is above {top}: the plan raises a layer to {top} bits at most"
        )


def check_scheme(scheme: str, device: str) -> None:
    """A scheme ``quantize`` parses (int8 or wXaY), and int8 only on the CPU."""
    if not parse_scheme(scheme).simulated and not device.startswith("cpu"):
        raise UserError(
            "--quantize int8 runs on the CPU (oneDNN int8 kernels); on CUDA use a "
            "simulated scheme such as w8a8"
        )
