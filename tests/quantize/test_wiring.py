"""Which quantizer each layer of the two SimNets reads, and the widths planned from that."""

from __future__ import annotations

import pytest
import torch

from convert.models import MobileNetV1, ResNet50
from quantize.architectures import build_simulated
from quantize.scheme import parse_scheme
from quantize.wiring import input_quantizers, plan_widths

# Parameters of the quantized layers, counted by hand from the architectures.
MOBILENET_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
MOBILENET_FIRST = 3 * 3 * 3 * 32
MOBILENET_LAST = 1024 * 1001
RESNET_FIRST = 7 * 7 * 3 * 64
RESNET_LAST = 2048 * 1001
RESNET_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks)


def _mobilenet_parameters() -> int:
    pairs = zip(MOBILENET_CHANNELS, MOBILENET_CHANNELS[1:], strict=False)
    separable = sum(9 * cin + cin * cout for cin, cout in pairs)
    return MOBILENET_FIRST + separable + MOBILENET_LAST


def _resnet_parameters() -> int:
    total, cin = RESNET_FIRST + RESNET_LAST, 64
    for width, blocks in RESNET_STAGES:
        total += cin * 4 * width  # the first block's downsample
        for _ in range(blocks):
            total += cin * width + 9 * width * width + width * 4 * width
            cin = 4 * width
    return total


@pytest.fixture(scope="module")
def mobilenet_net():
    torch.manual_seed(0)
    return build_simulated(MobileNetV1().eval()).eval()


@pytest.fixture(scope="module")
def resnet_net():
    torch.manual_seed(0)
    return build_simulated(ResNet50().eval()).eval()


@pytest.fixture(scope="module")
def mobilenet_readers(mobilenet_net):
    return input_quantizers(mobilenet_net)


@pytest.fixture(scope="module")
def resnet_readers(resnet_net):
    return input_quantizers(resnet_net)


def test_hand_counts_match_the_models(mobilenet_net, resnet_net):
    assert _mobilenet_parameters() == 4_210_112
    for net, count in (
        (mobilenet_net, _mobilenet_parameters()),
        (resnet_net, _resnet_parameters()),
    ):
        assert sum(layer.weight.numel() for _, layer in net.layers()) == count


# -- input_quantizers -------------------------------------------------------------------------
def test_mobilenet_readers(mobilenet_net, mobilenet_readers):
    readers = mobilenet_readers
    assert list(readers) == [name for name, _ in mobilenet_net.layers()]  # forward order
    assert len(readers) == 28
    assert readers["features.0"] == "input_quant"
    assert readers["features.1.depthwise"] == "features.0.out_quant"
    assert readers["features.1.pointwise"] == "features.1.depthwise.out_quant"
    assert readers["features.13.depthwise"] == "features.12.pointwise.out_quant"
    assert readers["classifier"] == "avgpool.out_quant"
    quantizers = {name for name, _ in mobilenet_net.act_quants()}
    assert set(readers.values()) <= quantizers
    # the last pointwise feeds the average pool, which no layer of its own reads
    assert "features.13.pointwise.out_quant" not in readers.values()


def test_resnet_readers(resnet_net, resnet_readers):
    readers = resnet_readers
    assert len(readers) == 54 and set(readers) == {name for name, _ in resnet_net.layers()}
    assert list(readers)[0] == "conv1" and list(readers)[-1] == "fc"
    assert readers["conv1"] == "input_quant"
    # after the max pool, both the shortcut and conv1 of the first block read the
    # quantizer before the pool
    assert readers["layer1.0.downsample"] == readers["layer1.0.conv1"] == "conv1.out_quant"
    assert readers["layer1.0.conv2"] == "layer1.0.conv1.out_quant"
    assert readers["layer1.0.conv3"] == "layer1.0.conv2.out_quant"
    assert readers["layer1.1.conv1"] == "layer1.0.out_quant"
    for stage, previous in (("layer2", "layer1.2"), ("layer3", "layer2.3"), ("layer4", "layer3.5")):
        assert readers[f"{stage}.0.downsample"] == f"{previous}.out_quant"
        assert readers[f"{stage}.0.conv1"] == f"{previous}.out_quant"
    assert readers["fc"] == "avgpool.out_quant"
    assert "layer1.0.downsample.out_quant" not in readers.values()  # read by the sum


def test_layer_reading_no_quantizer_is_left_out():
    torch.manual_seed(0)
    net = build_simulated(MobileNetV1().eval()).eval()
    net.features[0].out_quant = None  # features.1.depthwise now reads a bare activation
    readers = input_quantizers(net)
    assert "features.1.depthwise" not in readers
    assert readers["features.0"] == "input_quant"
    assert readers["features.1.pointwise"] == "features.1.depthwise.out_quant"


# -- plan_widths ----------------------------------------------------------------------------
def test_mobilenet_w4a4_input_stays_8_bits(mobilenet_net):
    widths = plan_widths(mobilenet_net, parse_scheme("w4a4"), None)
    assert widths.layers == {name: (4, 4) for name, _ in mobilenet_net.layers()}
    assert widths.quantizers["input_quant"] == 8
    others = {name: bits for name, bits in widths.quantizers.items() if name != "input_quant"}
    assert len(others) == 28 and set(others.values()) == {4}
    assert widths.parameters["features.0"] == MOBILENET_FIRST
    assert widths.parameters["classifier"] == MOBILENET_LAST
    assert sum(widths.parameters.values()) == _mobilenet_parameters()
    assert widths.weight_bits_mean == 4.0
    assert set(widths.weight_bits().values()) == {4}


def test_mobilenet_quantizer_takes_its_readers_width(mobilenet_net):
    spec = {"first": "w8a2", "features.3.depthwise": "w4a8", "last": "w8a6"}
    widths = plan_widths(mobilenet_net, parse_scheme("w4a4"), spec)
    assert widths.layers["features.0"] == (8, 2)
    assert widths.layers["features.3.depthwise"] == (4, 8)
    assert widths.layers["classifier"] == (8, 6)
    assert widths.layers["features.3.pointwise"] == (4, 4)
    quantizers = widths.quantizers
    assert quantizers["input_quant"] == 2  # the spec names the first layer: its aY holds
    assert quantizers["features.2.pointwise.out_quant"] == 8
    assert quantizers["avgpool.out_quant"] == 6
    assert quantizers["features.13.pointwise.out_quant"] == 4  # no layer reads it
    assert quantizers["features.3.depthwise.out_quant"] == 4


def test_wider_scheme_widens_the_input(mobilenet_net):
    widths = plan_widths(mobilenet_net, parse_scheme("w8a16"), None)
    assert widths.quantizers["input_quant"] == 16
    assert widths.quantizers["features.0.out_quant"] == 16


def test_resnet_shared_quantizer_takes_the_widest_reader(resnet_net):
    spec = {"layer1.0.downsample": "w4a8", "layer2.0.conv1": "w4a6", "layer2.0.downsample": "w3a5"}
    widths = plan_widths(resnet_net, parse_scheme("w4a4"), spec)
    quantizers = widths.quantizers
    assert quantizers["conv1.out_quant"] == 8  # read by layer1.0.downsample and .conv1
    assert widths.layers["layer1.0.conv1"] == (4, 4)
    assert quantizers["layer1.2.out_quant"] == 6
    assert widths.layers["layer2.0.downsample"] == (3, 5)
    assert quantizers["input_quant"] == 8
    assert quantizers["layer1.0.downsample.out_quant"] == 4  # read by the sum, not a layer
    assert quantizers["layer1.0.conv1.out_quant"] == 4


@pytest.mark.parametrize(
    "build, first, last, total",
    [
        ("mobilenet_net", MOBILENET_FIRST, MOBILENET_LAST, _mobilenet_parameters()),
        ("resnet_net", RESNET_FIRST, RESNET_LAST, _resnet_parameters()),
    ],
)
def test_first_and_last_at_8_bits_weight_mean(request, build, first, last, total):
    net = request.getfixturevalue(build)
    widths = plan_widths(net, parse_scheme("w4a8"), {"first": "w8a8", "last": "w8a8"})
    expected = (8 * (first + last) + 4 * (total - first - last)) / total
    assert 4.0 < widths.weight_bits_mean < 8.0
    assert widths.weight_bits_mean == pytest.approx(expected, rel=1e-12)
    names = list(widths.layers)
    assert widths.layers[names[0]] == widths.layers[names[-1]] == (8, 8)
    assert {widths.layers[name] for name in names[1:-1]} == {(4, 8)}
    assert widths.quantizers["input_quant"] == 8
