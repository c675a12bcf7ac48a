"""quantize_model with per-layer widths (``layer_bits``): the record, the layers' widths,
the refusals, and the int8 back end built from the same codes."""

from __future__ import annotations

import json

import pytest
import torch

from convert.models import MobileNetV1
from core.errors import UserError
from fixtures import photo_models as models
from quantize import quantize_model
from quantize.model import Choices, calibrated_net
from quantize.onednn import Int8Net
from quantize.scheme import parse_scheme

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = 4
SPEC = "first=w8a8,last=w8a8"


@pytest.fixture(scope="module")
def mobilenet_images():
    return models.crops(CALIBRATION, 101, "mobilenet")


@pytest.fixture(scope="module")
def resnet():
    return models.resnet(seed=0, images=4)


@pytest.fixture(scope="module")
def mobilenet_mixed(mobilenet, mobilenet_images):
    # nearest rounding: GPTQ's own record is tests/quantize/test_rounding.py's
    return quantize_model(
        mobilenet, [mobilenet_images], "w4a8", layer_bits=SPEC, rounding="nearest",
        bias_correction=False, quiet=True,
    )  # fmt: skip


def _expected_mean(net, first: str, last: str) -> float:
    counts = {name: layer.weight.numel() for name, layer in net.layers()}
    high = counts[first] + counts[last]
    return (8 * high + 4 * (sum(counts.values()) - high)) / sum(counts.values())


def _check_mixed_record(net, first: str, last: str) -> dict:
    record = net.quantization_record
    json.dumps(record)
    names = [name for name, _ in net.layers()]
    assert (names[0], names[-1]) == (first, last)
    assert record["scheme"] == "w4a8"
    assert (record["weight_bits"], record["activation_bits"]) == (4, 8)
    expected = {name: "w4a8" for name in names} | {first: "w8a8", last: "w8a8"}
    assert record["layer_bits"] == expected
    order = list(record["layer_bits"])  # as the forward pass meets them
    assert (order[0], order[-1]) == (first, last)
    assert 4.0 < record["weight_bits_mean"] < 8.0
    assert record["weight_bits_mean"] == round(_expected_mean(net, first, last), 4)
    assert record["input_bits"] == 8
    layers = dict(net.layers())
    assert layers[first].weight_bits == layers[last].weight_bits == 8
    assert {layers[name].weight_bits for name in names[1:-1]} == {4}
    # the least-squares clip search runs below 8 bits only
    assert set(record["weight_clipping"]) == set(names[1:-1])
    assert {entry["bits"] for entry in record["activation_ranges"].values()} == {8}
    return record


@pytest.mark.slow
def test_mobilenet_first_and_last_at_8_bits(mobilenet_mixed):
    record = _check_mixed_record(mobilenet_mixed, "features.0", "classifier")
    assert "learned_rounding" not in record and record["rounding"] == "nearest"
    assert record["weight_bits_mean"] == pytest.approx(4.9747, abs=1e-4)  # 4210112 weights


@pytest.mark.slow
def test_resnet_first_and_last_at_8_bits(resnet):
    images = models.crops(2, 201, "resnet")
    net = quantize_model(
        resnet, [images], "w4a8", layer_bits=SPEC, rounding="nearest", bias_correction=False,
        quiet=True,
    )  # fmt: skip
    record = _check_mixed_record(net, "conv1", "fc")
    assert "learned_rounding" not in record and record["rounding"] == "nearest"
    assert record["layer_bits"]["layer1.0.downsample"] == "w4a8"


@pytest.mark.slow
def test_weight_codes_match_weight_q_over_scale(mobilenet_mixed):
    for name, layer in mobilenet_mixed.layers():
        qmax = 2 ** (layer.weight_bits - 1) - 1
        codes = layer.weight_codes()
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        ratio = layer.weight_q / layer.weight_scale.view(shape)
        assert codes.shape == layer.weight.shape, name
        assert torch.equal(codes, torch.round(ratio)), name
        assert torch.allclose(ratio, codes, atol=1e-3), name  # weight_q lies on the grid
        assert int(codes.abs().max()) <= qmax, name


def test_layer_bits_over_int8_is_refused():
    model = MobileNetV1()
    with pytest.raises(UserError, match="needs a simulated --quantize wXaY") as err:
        quantize_model(model, [torch.zeros(1, 3, 224, 224)], "int8", layer_bits=SPEC)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not NAME=wXaY"):
        quantize_model(model, [torch.zeros(1, 3, 224, 224)], "w4a8", layer_bits="first")


def test_unknown_rounding_is_refused():
    with pytest.raises(UserError, match="rounding 'stochastic' is unknown") as err:
        quantize_model(MobileNetV1(), [torch.zeros(1, 3, 224, 224)], "w4a8", rounding="stochastic")
    text = str(err.value)
    assert "\n" not in text and all(word in text for word in ("auto", "nearest", "gptq"))


@pytest.mark.slow
def test_int8_back_end_uses_the_simnet_codes(mobilenet, mobilenet_images):
    int8 = quantize_model(mobilenet, [mobilenet_images], "int8", quiet=True)
    record = int8.quantization_record
    assert record["scheme"] == "int8" and record["kernels"].startswith("int8: oneDNN")
    assert set(record["layer_bits"].values()) == {"w8a8"}
    assert record["weight_bits_mean"] == 8.0 and record["input_bits"] == 8
    assert "learned_rounding" not in record
    with torch.inference_mode():
        logits, reference = int8(mobilenet_images), mobilenet(mobilenet_images)
    assert logits.shape == (CALIBRATION, 1001) and bool(torch.isfinite(logits).all())
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    # the back end is built from the calibrated SimNet's codes and scales
    choices = Choices("percentile", False, False, "auto", "cpu", True)
    net, *_ = calibrated_net(mobilenet, [mobilenet_images], parse_scheme("int8"), None, choices)
    built = Int8Net(net)
    sim = net.features[3].depthwise
    ported = built.features[3].depthwise
    assert torch.equal(ported.codes, sim.weight_codes().to(torch.int8))
    assert torch.equal(ported.w_scale, sim.weight_scale)
    shape = (-1, 1, 1, 1)
    assert torch.allclose(sim.weight_codes() * sim.weight_scale.view(shape), sim.weight_q)
    with torch.inference_mode():
        simulated, ported_logits = net(mobilenet_images), built(mobilenet_images)
    assert float((simulated - ported_logits).abs().max()) < 0.05 * float(simulated.abs().max())
