"""Post-training quantization of the converted MobileNet-v1 and ResNet-50 v1.5.

Public API (``scheme`` is torch-free; ``quantize_model`` imports torch when first used)::

    SCHEMES, CALIBRATION_METHODS, DEFAULT_METHOD
    parse_scheme(text) -> QuantScheme
    quantize_model(model, calibration, scheme="int8", *, method=DEFAULT_METHOD,
                   equalize=False, bias_correction=True, rounding="auto", layer_bits=None,
                   mixed_precision=False, bit_budget=None, target_agreement=0.98,
                   device="cpu", store=None, quiet=False) -> nn.Module
    quantize.model.layer_sensitivity(model, calibration, scheme, ...) -> (costs, record)

Steps: batch norm folded into the convolutions; cross-layer equalization; activation
ranges per tensor from histograms of the calibration batches; weights symmetric per output
channel (below 8 bits each channel's clip searched); learned rounding (GPTQ) where a layer
has 6 bits or fewer; empirical bias correction. Per-layer widths come from
``--layer-bits`` or a mixed-precision plan (``mixed.py``); ``store`` keeps calibrations.
One set of scales feeds both back ends: "int8" runs oneDNN's int8 kernels on the CPU;
"w<b>a<b>" fake-quantizes in float32 on any device.
"""

from quantize.scheme import (
    CALIBRATION_METHODS,
    DEFAULT_METHOD,
    SCHEMES,
    QuantScheme,
    check_method,
    parse_scheme,
)

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_METHOD",
    "SCHEMES",
    "QuantScheme",
    "check_method",
    "parse_scheme",
    "quantize_model",
]


def __getattr__(name: str):
    # quantize_model needs torch; the scheme grammar must not (option checks stay instant).
    if name == "quantize_model":
        from quantize.model import quantize_model

        return quantize_model
    raise AttributeError(f"module 'quantize' has no attribute {name!r}")
