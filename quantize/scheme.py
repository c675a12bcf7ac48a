"""Quantization schemes: how many bits for weights and activations, and which back end runs
them ("int8": real oneDNN int8 kernels; "w<b>a<b>": fake-quantized in float32), and the
calibration methods. Torch-free: the command-line checks import it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import UserError

# How activation ranges are chosen from the calibration histograms, and the default
# (percentile measured best: docs/measurements.md).
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "mse", "entropy")
DEFAULT_METHOD = "percentile"
# Named schemes the command line lists; any other "w<2-16>a<2-16>" parses too.
SCHEMES: tuple[str, ...] = ("int8", "w8a8", "w4a8", "w6a6", "w4a4", "w8a16")
MIN_BITS, MAX_BITS = 2, 16
_PATTERN = re.compile(r"w(\d+)a(\d+)")


@dataclass(frozen=True)
class QuantScheme:
    """``weight_bits``/``activation_bits``; ``simulated`` False means the int8 kernels."""

    name: str
    weight_bits: int
    activation_bits: int
    simulated: bool

    @property
    def kernels(self) -> str:
        if self.simulated:
            return "simulated: fake-quantized in float32"
        return "int8: oneDNN kernels (torch.ops.onednn.qconv_pointwise / qlinear_pointwise)"


def parse_scheme(text: str) -> QuantScheme:
    """``"int8"`` or ``"w<bits>a<bits>"`` (2 to 16 bits each); UserError otherwise."""
    name = str(text).strip().lower()
    if name == "int8":
        return QuantScheme("int8", 8, 8, simulated=False)
    match = _PATTERN.fullmatch(name)
    if match is None:
        raise UserError(
            f"--quantize {text!r} is not a scheme: use int8 (real int8 kernels) or a "
            f"simulated w<bits>a<bits> such as {', '.join(SCHEMES[1:])}"
        )
    weight_bits, activation_bits = int(match[1]), int(match[2])
    for kind, bits in (("weight", weight_bits), ("activation", activation_bits)):
        if not MIN_BITS <= bits <= MAX_BITS:
            raise UserError(
                f"--quantize {text!r} asks for {bits} {kind} bits; "
                f"use {MIN_BITS} to {MAX_BITS} bits"
            )
    return QuantScheme(name, weight_bits, activation_bits, simulated=True)


def check_method(method: str) -> str:
    """``method`` if it is one of CALIBRATION_METHODS; UserError otherwise."""
    if method not in CALIBRATION_METHODS:
        raise UserError(
            f"calibration method {method!r} is unknown: use one of {', '.join(CALIBRATION_METHODS)}"
        )
    return method
