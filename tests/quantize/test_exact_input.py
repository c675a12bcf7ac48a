"""MobileNet's 8-bit input is quantized without error: the codes are the pixel values."""

import numpy as np
import torch

from convert.models import MobileNetV1, ResNet50
from preprocess import normalize
from quantize.architectures import build_simulated
from quantize.calibrate import assign_ranges, observe_ranges
from quantize.onednn import Int8Input


def calibrated(model, images: torch.Tensor, bits: int = 8):
    net = build_simulated(model.eval()).eval()
    observe_ranges(net, [images], quiet=True)
    record = assign_ranges(net, "percentile", bits)
    return net, record


def pixels(model_name: str, seed: int = 0, size: int = 224) -> tuple[np.ndarray, torch.Tensor]:
    u8 = np.random.default_rng(seed).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    u8[0, 0, :256, 0] = np.arange(min(size, 256))  # every value the first row can hold
    nchw = torch.from_numpy(normalize(u8, model_name)).permute(0, 3, 1, 2).contiguous()
    return u8, nchw


def test_int8_input_codes_are_the_uint8_pixels():
    torch.manual_seed(0)
    u8, nchw = pixels("mobilenet_v1")
    net, record = calibrated(MobileNetV1(), nchw)
    codes = Int8Input(net.input_quant)(nchw)
    assert torch.equal(codes.permute(0, 2, 3, 1).contiguous(), torch.from_numpy(u8))
    assert record["input_quant"]["zero_point"] == 127
    assert record["input_quant"]["method"].startswith("exact pixel codes")


def test_first_convolution_is_unchanged_away_from_the_padded_border():
    torch.manual_seed(0)
    _, nchw = pixels("mobilenet_v1", seed=1)
    net, _ = calibrated(MobileNetV1(), nchw)
    first = net.features[0]
    with torch.inference_mode():
        fp32 = first.preactivation(nchw)
        net.input_quant.quantized, first.quantized = True, True
        first.weight_q = first.weight  # only the input's quantization in play
        exact = first.preactivation(net.input_quant(nchw))
    interior = (exact - fp32)[..., :-1, :-1].abs().max()
    assert interior < 1e-4 * fp32.abs().max()
    # TF-SAME pads this stride-2 convolution on the bottom and right only: there the pad
    # stands for -half a step, a small, bounded difference
    border = (exact - fp32)[..., -1, :].abs().max()
    half_step = net.input_quant.scale / 2
    assert 0 < border <= half_step * first.weight.abs().sum(dim=(1, 2, 3)).max() + 1e-5


def test_other_widths_and_resnet_keep_min_max_input_ranges():
    torch.manual_seed(0)
    _, nchw = pixels("mobilenet_v1")
    _, record = calibrated(MobileNetV1(), nchw, bits=6)
    assert record["input_quant"]["method"] == "minmax"
    _, nchw = pixels("resnet50", size=64)
    net, record = calibrated(ResNet50(), nchw)
    assert record["input_quant"]["method"] == "minmax" and net.input_quant.shift == 0.0
