"""Activation ranges from the calibration batches, and empirical bias correction."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from tqdm import tqdm

from .observers import HistogramObserver
from .simulated import QuantLayer, SimNet, set_quantized

log = logging.getLogger(__name__)

CHUNK = 8  # images per forward pass while calibrating
BIAS_CORRECTION_IMAGES = 64  # bias correction keeps two activations per image and stage


def chunks(batches: list[torch.Tensor], limit: int | None = None) -> Iterator[torch.Tensor]:
    """The calibration images in chunks of CHUNK, at most ``limit`` images in all."""
    left = limit
    for batch in batches:
        for start in range(0, len(batch), CHUNK):
            piece = batch[start : start + CHUNK]
            if left is not None:
                if left <= 0:
                    return
                piece = piece[:left]
                left -= len(piece)
            yield piece


def observe_ranges(net: SimNet, batches: list[torch.Tensor], quiet: bool) -> None:
    """Two fp32 passes: min/max, then histograms, into each ActQuant's observer."""
    set_quantized(net, False)
    sites = [quant for _, quant in net.act_quants()]
    for quant in sites:
        quant.observer = HistogramObserver()
    total = sum(len(batch) for batch in batches)
    try:
        for mode in ("minmax", "histogram"):
            for quant in sites:
                quant.observing = mode
                if mode == "histogram":
                    quant.observer.start_histogram()
            with (
                torch.inference_mode(),
                tqdm(total=total, desc=f"calibrating ({mode})", unit="img", disable=quiet) as bar,
            ):
                for piece in chunks(batches):
                    net(piece)
                    bar.update(len(piece))
    finally:
        for quant in sites:
            quant.observing = None


def exact_pixel_input(net: SimNet) -> str:
    """Quantize an 8-bit pixel input without error: its codes are the pixel values.

    The input is ``p / 127.5 - 1`` for a uint8 pixel ``p`` (MobileNet's preprocessing).
    With scale 1/127.5, zero point 127 and the input shifted up by half a step first, ``p``
    itself is the code, where min/max would put every pixel half a step from its code. The
    first convolution's bias takes the shift back (exact away from the border; its TF-SAME
    padding row and column see the pad as -half a step instead of 0)."""
    quant, first = net.input_quant, net.layers()[0][1]  # the first convolution
    quant.set_range(-1.0, 1.0, 8)
    quant.zero_point = 127
    quant.shift = quant.scale / 2
    quant.range = (-127 * quant.scale, 128 * quant.scale)
    taps = first.weight.double().sum(dim=(1, 2, 3))
    first.bias_q = (first.bias_q.double() - quant.shift * taps).float()
    return "exact pixel codes (zero point 127, shifted half a step)"


def assign_ranges(net: SimNet, method: str, bits: int | dict[str, int]) -> dict:
    """Each activation's range by ``method`` at its width (``bits``: one for all, or per
    quantizer name); the network input by min/max, or exactly where the model's row says
    ``exact_pixel_input`` and its width is 8. The record."""
    ranges = {}
    for name, quant in net.act_quants():
        observer = quant.observer
        width = bits if isinstance(bits, int) else bits[name]
        if name == "input_quant" and net.architecture.exact_pixel_input and width == 8:
            chosen = exact_pixel_input(net)
        else:
            chosen = "minmax" if name == "input_quant" else method
            quant.set_range(*observer.choose(chosen, width), width)
        ranges[name.removesuffix(".out_quant")] = {
            "observed": [observer.min, observer.max],
            "range": [quant.range[0], quant.range[1]],
            "scale": quant.scale,
            "zero_point": quant.zero_point,
            "bits": width,
            "method": chosen,
        }
    return ranges


def _stage_layers(stage: torch.nn.Module) -> list[QuantLayer]:
    return [m for m in stage.modules() if isinstance(m, QuantLayer)]


def _tap(layers: list[QuantLayer], on: bool) -> None:
    for layer in layers:
        layer.tapping, layer.tap_sum, layer.tap_count = on, None, 0


def correct_biases(
    net: SimNet, batches: list[torch.Tensor], quiet: bool, limit: int = BIAS_CORRECTION_IMAGES
) -> dict:
    """Empirical bias correction, layer by layer in forward order.

    The fp32 and the quantized network run side by side over the first ``limit``
    calibration images, one stage at a time. For each layer, the mean per-channel error of
    its pre-activation (quantized, with every earlier layer already corrected, minus fp32)
    is subtracted from the quantized bias (``bias_q``). Returns per layer the largest
    correction relative to the layer's output scale.
    """
    fp_states = [piece.clone() for piece in chunks(batches, limit)]
    q_states = [piece.clone() for piece in fp_states]
    images = sum(len(piece) for piece in fp_states)
    corrections = {}
    stages = net.stages()
    with (
        torch.inference_mode(),
        tqdm(total=len(stages), desc="bias correction", unit="stage", disable=quiet) as bar,
    ):
        for _, stage in stages:
            layers = _stage_layers(stage)
            # fp32 pass: reference pre-activations of every layer, and the next inputs
            set_quantized(stage, False)
            _tap(layers, True)
            fp_states = [stage(x) for x in fp_states]
            reference = {id(layer): layer.tap_sum / layer.tap_count for layer in layers}
            _tap(layers, False)
            set_quantized(stage, True)
            for layer in layers:
                _tap([layer], True)
                for x in q_states:
                    stage(x)
                error = (layer.tap_sum / layer.tap_count) - reference[id(layer)]
                _tap([layer], False)
                layer.bias_q = (layer.bias_q.double() - error).float()
                name = next(n for n, m in net.named_modules() if m is layer)
                corrections[name] = float(error.abs().max())
            q_states = [stage(x) for x in q_states]
            bar.update(1)
    set_quantized(net, True)
    log.info("bias correction on %d images", images)
    return {"images": images, "max_abs_correction": corrections}
