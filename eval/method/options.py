"""The method's options: what is applied to the fp32 model (``--transform`` or
``--quantize`` with its choices) and what it calibrates on, for ``python -m eval``,
``python -m eval layers`` and ``python -m pipeline.run``.

Torch-free, so ``--help`` and the checks stay instant: the scheme grammar and the
calibration methods come from ``quantize.scheme``, not restated here. The fields live in
``eval.options.EvalSettings`` (one settings object per evaluation); this module defines,
checks and names them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from core.cli import check_choice
from core.errors import UserError
from quantize.scheme import CALIBRATION_METHODS, parse_scheme

# EvalSettings' fields that describe the method; ``unmodified`` resets them.
METHOD_FIELDS = (
    "transform",
    "quantize",
    "calibration_method",
    "equalize",
    "bias_correction",
    "calibration_cache",
    "reference",
)
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
    with a suffix for a --quantize run that leaves the defaults (a calibration method, or
    a technique left out), so such runs sit beside the default one instead of over it."""
    if settings.quantize is not None:
        suffix = f"-{settings.calibration_method}" if settings.calibration_method else ""
        suffix += "-cle" if settings.equalize else ""
        suffix += "" if settings.bias_correction else "-no-bc"
        return settings.quantize + suffix
    if settings.transform is not None:
        return split_spec(settings.transform)[1]
    return None


def unmodified(settings):
    """The same evaluation of the converted model itself: fp32, no method."""
    defaults = {f.name: f.default for f in dataclasses.fields(settings)}
    return dataclasses.replace(
        settings, precision="fp32", **{name: defaults[name] for name in METHOD_FIELDS}
    )


def check_method_settings(settings) -> None:
    """The method options fit together and fit the backend and device: one sentence."""
    quantize_only = (
        (settings.calibration_method is not None, "--calibration-method"),
        (settings.equalize, "--equalization"),
        (not settings.bias_correction, "--no-bias-correction"),
    )
    if settings.transform is not None and settings.quantize is not None:
        raise UserError("give --transform or --quantize, not both")
    if settings.reference is not None and not settings.modified:
        raise UserError(
            "--reference names the fp32 run a modified model is judged against: give it "
            "with --transform, --quantize or a --precision other than fp32"
        )
    if settings.transform is None and settings.quantize is None:
        for given, option in quantize_only:
            if given:
                raise UserError(f"{option} is for --quantize")
        return
    if settings.backend == "tf":
        raise UserError("--transform and --quantize modify the PyTorch model: use --backend torch")
    if settings.transform is not None:
        split_spec(settings.transform)  # its spelling, before any work
        if any(given for given, _ in quantize_only):
            raise UserError(
                "--calibration-method, --equalization and --no-bias-correction are "
                "for --quantize; your transform chooses its own"
            )
        return
    if settings.calibration_method is not None:
        check_choice("calibration method", settings.calibration_method, CALIBRATION_METHODS)
    check_scheme(settings.quantize, settings.device)


def check_scheme(scheme: str, device: str) -> None:
    """A scheme ``quantize`` parses (int8 or wXaY), and int8 only on the CPU."""
    if not parse_scheme(scheme).simulated and not device.startswith("cpu"):
        raise UserError(
            "--quantize int8 runs on the CPU (oneDNN int8 kernels); on CUDA use a "
            "simulated scheme such as w8a8"
        )
