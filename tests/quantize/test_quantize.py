"""Post-training quantization: API errors, observers, folding/equalization exactness, the
two back ends' agreement, accuracy kept on held-out photo crops, threads."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch

from core.errors import UserError
from fixtures import photo_models as models
from quantize import CALIBRATION_METHODS, DEFAULT_METHOD, SCHEMES, parse_scheme, quantize_model
from quantize.architectures import build_simulated
from quantize.equalize import equalize
from quantize.observers import HistogramObserver

# A test that builds or quantizes a real-sized model (itself or through a module fixture)
# takes more than about 5 s: each such test is marked slow; the others stay quick.

CALIBRATION, HELD_OUT = 16, 32


@pytest.fixture(scope="module")
def mobilenet():
    torch.set_num_threads(2)
    return models.mobilenet(seed=0)


@pytest.fixture(scope="module")
def mobilenet_data():
    return models.crops(CALIBRATION, 101, "mobilenet"), models.crops(HELD_OUT, 102, "mobilenet")


@pytest.fixture(scope="module")
def mobilenet_int8(mobilenet, mobilenet_data):
    # every technique on: the int8 back end's per-channel ReLU6 clips (after equalization)
    # are exercised too
    return quantize_model(mobilenet, iter([mobilenet_data[0]]), "int8", equalize=True, quiet=True)


@pytest.fixture(scope="module")
def resnet():
    return models.resnet(seed=0, images=12)


@pytest.fixture(scope="module")
def resnet_data():
    return models.crops(8, 201, "resnet"), models.crops(12, 202, "resnet")


def _logits(model, images):
    with torch.inference_mode():
        return model(images)


def _top1_agreement(a, b) -> float:
    return float((a.argmax(1) == b.argmax(1)).double().mean())


# -- API -------------------------------------------------------------------------------------
def test_schemes_parse():
    assert "int8" in SCHEMES and "w8a8" in SCHEMES and DEFAULT_METHOD in CALIBRATION_METHODS
    assert parse_scheme("int8").simulated is False
    scheme = parse_scheme("W3A5")
    assert (scheme.weight_bits, scheme.activation_bits, scheme.simulated) == (3, 5, True)


@pytest.mark.parametrize("text", ["int4", "w1a8", "w8a17", "fp8", "", "w8"])
def test_bad_scheme_is_one_sentence(text):
    with pytest.raises(UserError) as err:
        parse_scheme(text)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_bad_inputs_are_user_errors(mobilenet, mobilenet_data):
    calibration = [mobilenet_data[0][:2]]
    cases = [
        (torch.nn.Conv2d(3, 3, 1), calibration, {}, "not Conv2d"),
        (mobilenet, [], {}, "empty"),
        (mobilenet, iter(()), {}, "empty"),
        (mobilenet, calibration, {"method": "median"}, "median"),
        (mobilenet, calibration, {"scheme": "int3"}, "int3"),
    ]
    for model, data, kwargs, words in cases:
        with pytest.raises(UserError, match=words) as err:
            quantize_model(model, data, quiet=True, **kwargs)
        assert "\n" not in str(err.value)


# -- observers --------------------------------------------------------------------------------
def _observed(values: torch.Tensor) -> HistogramObserver:
    observer = HistogramObserver()
    for half in values.chunk(2):
        observer.observe_minmax(half)
    observer.start_histogram()
    for half in values.chunk(2):
        observer.observe_histogram(half)
    return observer


def test_observer_ranges():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    bulk = torch.rand(200_000, generator=generator) * 4.0  # uniform [0, 4)
    values = torch.cat([bulk, torch.tensor([50.0, 60.0])])  # two far outliers
    observer = _observed(values)
    assert observer.choose("minmax", 8) == (0.0, pytest.approx(60.0))
    _, hi = observer.choose("percentile", 8)
    assert 3.9 < hi < 4.1  # the 0.01 % tail (the outliers) is cut
    # heavy tails (|Laplace(1)|, max about 12): at 4 bits mse and entropy trade the rare
    # large values for resolution (the least-MSE clip of a Laplace is about 5 there)
    tails = torch.distributions.Laplace(0.0, 1.0).sample((200_000,)).abs()
    observer = _observed(tails)
    for method in ("mse", "entropy"):
        lo, hi = observer.choose(method, 4)
        assert lo == 0.0 and 2.0 < hi < 0.7 * observer.max, (method, hi)
    # entropy must not collapse a range: a half-normal keeps most of its span, mostly-zero
    # ReLU outputs are not pulled in by their spike at 0, and values far from 0 (a pooled
    # head input) are never clipped away entirely
    for data, at_least in (
        (torch.randn(200_000, generator=generator).abs(), 0.8),
        (torch.cat([torch.zeros(190_000), torch.rand(10_000, generator=generator) * 5]), 0.9),
        (0.5 + torch.rand(50_000, generator=generator), 0.9),
    ):
        observer = _observed(data)
        assert observer.choose("entropy", 8)[1] >= at_least * observer.max
    signed = _observed(torch.randn(100_000, generator=generator))
    lo, hi = signed.choose("minmax", 8)
    assert lo == float(signed.min) and hi == float(signed.max)
    lo, hi = signed.choose("percentile", 8)
    assert signed.min < lo < -3.0 and 3.0 < hi < signed.max


# -- exactness of the float32 transformations -------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenet", "resnet"])
def test_folding_and_equalization_keep_logits(arch, request):
    model = request.getfixturevalue(arch)
    images = request.getfixturevalue(f"{arch}_data")[1][:6]
    reference = _logits(model, images)
    net = build_simulated(model).eval()
    tolerance = 2e-4 * float(reference.abs().max())
    assert float((_logits(net, images) - reference).abs().max()) < tolerance
    record = equalize(net)
    assert max(pair["scale_max"] / pair["scale_min"] for pair in record) > 2  # it did scale
    if arch == "mobilenet":
        clips = net.features[1].depthwise.clip
        assert float(clips.max() / clips.min()) > 2  # ReLU6 clip now per channel
    assert float((_logits(net, images) - reference).abs().max()) < tolerance


# -- back ends ------------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_record_names_and_dequantize(mobilenet, mobilenet_int8, mobilenet_data):
    record = mobilenet_int8.quantization_record
    json.dumps(record)
    assert record["scheme"] == "int8" and record["calibration_images"] == CALIBRATION
    assert record["kernels"].startswith("int8: oneDNN")
    assert record["techniques"] == [
        "batch-norm folding", "cross-layer equalization", "bias correction"
    ]  # fmt: skip
    names = dict(mobilenet_int8.named_modules())
    for name in ("features.0", "features.5.depthwise", "features.5.pointwise", "avgpool"):
        assert name in names
    outputs = {}
    hooks = [
        names[n].register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, (m, o)))
        for n in ("features.5.pointwise", "avgpool", "classifier")
    ]
    images = mobilenet_data[1][:2]
    logits = _logits(mobilenet_int8, images)
    for hook in hooks:
        hook.remove()
    assert logits.dtype == torch.float32 and logits.shape == (2, 1001)
    module, output = outputs["features.5.pointwise"]
    assert output.dtype == torch.uint8 and module.dequantize(output).dtype == torch.float32
    assert outputs["classifier"][1].dtype == torch.float32
    assert not any(p.requires_grad for p in mobilenet_int8.parameters())
    # the input model is untouched
    assert isinstance(mobilenet.features[1].depthwise.bn, torch.nn.BatchNorm2d)


@pytest.mark.slow
def test_simulated_and_int8_agree(mobilenet, mobilenet_int8, mobilenet_data):
    calibration, held_out = mobilenet_data
    simulated = quantize_model(mobilenet, [calibration], "w8a8", equalize=True, quiet=True)
    assert (
        simulated.quantization_record["activation_ranges"]
        == (mobilenet_int8.quantization_record["activation_ranges"])
    )
    a, b = _logits(simulated, held_out), _logits(mobilenet_int8, held_out)
    # Same scales and codes; only float32 summation order and rare rounding ties differ,
    # so nearly every image keeps its top-1 and logits differ by a few output steps.
    assert _top1_agreement(a, b) >= 0.9
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())


@pytest.mark.slow
def test_int8_keeps_fp32_top1(mobilenet, mobilenet_int8, mobilenet_data):
    held_out = mobilenet_data[1]
    reference = _logits(mobilenet, held_out)
    channels_last = held_out.contiguous(memory_format=torch.channels_last)
    quantized = _logits(mobilenet_int8, channels_last)
    # about 85 % on this deliberately fragile model (python -m benchmarks.quantization_study)
    assert _top1_agreement(reference, quantized) >= 0.6


@pytest.mark.slow
def test_resnet_int8(resnet, resnet_data):
    calibration, held_out = resnet_data
    int8 = quantize_model(resnet, [calibration], "int8", quiet=True)
    simulated = quantize_model(resnet, [calibration], "w8a8", quiet=True)
    names = dict(int8.named_modules())
    assert {"conv1", "maxpool", "layer1.0", "layer4.2", "avgpool", "fc"} <= set(names)
    reference, a, b = (_logits(m, held_out) for m in (resnet, int8, simulated))
    assert _top1_agreement(a, b) >= 0.9
    assert _top1_agreement(reference, a) >= 0.75
    with pytest.raises(UserError, match="on the CPU"):
        copy.deepcopy(int8).to("meta")


@pytest.mark.slow
def test_int8_is_thread_safe(mobilenet_int8, mobilenet_data):
    images = mobilenet_data[1][:8]
    expected = _logits(mobilenet_int8, images)
    results, errors = {}, []

    def work(index):
        try:
            torch.set_num_threads(1)
            with torch.inference_mode():
                results[index] = mobilenet_int8(images[index * 4 : index * 4 + 4])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert torch.equal(torch.cat([results[0], results[1]]), expected)


@pytest.mark.slow
def test_techniques_help_the_fragile_mobilenet(mobilenet, mobilenet_data):
    calibration, held_out = mobilenet_data
    reference = _logits(mobilenet, held_out)
    share = {}
    # the low-bit default (learned rounding, bias correction) against neither of them
    for name, rounding, correct in (("none", "nearest", False), ("all", "auto", True)):
        quantized = quantize_model(
            mobilenet, [calibration], "w4a8", rounding=rounding, bias_correction=correct,
            quiet=True,
        )  # fmt: skip
        share[name] = _top1_agreement(reference, _logits(quantized, held_out))
    assert share["all"] > share["none"], share


def test_the_option_checks_are_the_quantize_packages_own():
    """The torch-free option checks use quantize.scheme's grammar and methods, and
    importing them does not import torch."""
    import subprocess
    import sys

    from eval.method import options

    assert options.CALIBRATION_METHODS is CALIBRATION_METHODS
    code = "import sys, eval.options, quantize; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for scheme in ("int8", "w8a8", "w4a8", "w2a16", "w1a8", "w8a17", "w8", "int4", "fp8"):
        try:
            parse_scheme(scheme)
            accepted = True
        except UserError:
            accepted = False
        try:
            options.check_scheme(scheme, "cpu")
            assert accepted, scheme
        except UserError:
            assert not accepted, scheme
