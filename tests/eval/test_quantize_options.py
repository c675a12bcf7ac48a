"""--quantize's per-layer widths, rounding and mixed precision on the command line: each
refusal is one sentence before any work, the choices are recorded (the --layer-bits map as
parsed, the model's MLPerf ratio as the plan's target) and name the output folder, they
reach ``quantize_model`` with the calibration store, and results.json's ``quantization``
says what ran.

Most runs use a stand-in ``quantize_model`` that records what it was given (and a toy
converted model); one runs the real one on a MobileNet-v1 of random weights.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.cli import run_cli
from core.errors import UserError
from eval.__main__ import default_out_dir, main
from eval.method.options import ROUNDINGS, layer_bits_digest, unmodified
from eval.method.transform import (
    TransformRecord,
    describe_transform,
    quantization_section,
    spec_digest,
)
from eval.options import EvalSettings
from fixtures.images import write_val_set
from preprocess import build_cache

N_IMAGES = 4
FIRST_LAST = "e5f0c1f9"  # the first 8 hex digits of {"first": "w8a8", "last": "w8a8"}'s digest


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A few cached images for each model."""
    root = tmp_path_factory.mktemp("quantize_options")
    write_val_set(root / "data", N_IMAGES, layout="val_map", seed=13)
    for model in ("resnet50", "mobilenet_v1"):
        build_cache(model, root / "data", root / model, workers=1, quiet=True)
    return root


def run(argv, capsys):
    code = run_cli(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def eval_argv(model, cache_dir, weights, out, *extra):
    return [
        "--model", model, "--cache-dir", str(cache_dir), "--weights", str(weights),
        "--out", str(out), "--batch-size", "2", "--quiet", *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer-bits", "first=w8a8"], "--layer-bits is for --quantize"),
        (["--quantize", "int8", "--layer-bits", "first=w8a8"],
         "--layer-bits needs a simulated --quantize wXaY (such as w4a8)"),
        (["--transform", "a.py:f", "--layer-bits", "last=w8a8"],
         "--layer-bits is for --quantize; your transform chooses its own"),
        (["--quantize", "w4a8", "--layer-bits", "first"],
         "--layer-bits entry 'first' is not NAME=wXaY"),
        (["--quantize", "w4a8", "--layer-bits", "first=w8a8,first=w4a4"],
         "--layer-bits gives layer 'first' twice"),
        (["--quantize", "w4a8", "--layer-bits", "last=w1a8"], "asks for 1 weight bits"),
        (["--quantize", "w4a8", "--layer-bits", "missing.json"],
         "--layer-bits file missing.json does not exist"),
        (["--rounding", "gptq"], "--rounding is for --quantize"),
        (["--transform", "a.py:f", "--rounding", "nearest"],
         "--rounding is for --quantize; your transform chooses its own"),
        (["--transform", "a.py:f", "--no-bias-correction", "--rounding", "gptq"],
         "--no-bias-correction and --rounding are for --quantize; your transform"),
        (["--mixed-precision"], "--mixed-precision is for --quantize"),
        (["--bit-budget", "5"], "--bit-budget is for --quantize"),
        (["--quantize", "int8", "--mixed-precision"],
         "--mixed-precision raises layers toward 8 bits, and --quantize int8 runs every "
         "layer at 8 bits or more already"),
        (["--quantize", "w8a16", "--mixed-precision"], "--quantize w8a16 runs every layer"),
        (["--quantize", "w4a8", "--bit-budget", "5"],
         "--bit-budget is the size of a --mixed-precision plan: give it with"),
        (["--quantize", "w4a8", "--mixed-precision", "--bit-budget", "3"],
         "--bit-budget 3 is below w4a8's 4 weight bits: no plan can be that small"),
        (["--quantize", "w4a8", "--mixed-precision", "--bit-budget", "9"],
         "--bit-budget 9 is above 8: the plan raises a layer to 8 bits at most"),
        (["--quantize", "w4a8", "--mixed-precision", "--bit-budget", "lots"],
         "--bit-budget 'lots' is not a number"),
        (["--quantize", "w4a8", "--mixed-precision", "--bit-budget", "nan"],
         "--bit-budget 'nan' is not a number"),
    ],
)  # fmt: skip
def test_each_bad_choice_is_one_sentence_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, stdout, err = run(eval_argv("resnet50", tmp_path / "none", "w.pth", out, *extra), capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err and stdout == ""
    assert not out.exists()


def test_the_python_api_is_checked_as_the_command_line_is():
    with pytest.raises(UserError, match="^unknown rounding 'best': expected one of auto"):
        EvalSettings(quantize="w4a8", rounding="best").check()
    with pytest.raises(UserError, match="^--bit-budget '5' is not a number"):
        EvalSettings(quantize="w4a8", mixed_precision=True, bit_budget="5").check()
    EvalSettings(quantize="w4a8", mixed_precision=True, bit_budget=8).check()
    EvalSettings(quantize="w4a8", mixed_precision=True, bit_budget=4).check()
    EvalSettings(quantize="w6a6", layer_bits="last=w8a8", rounding="gptq").check()


def test_the_roundings_are_the_quantize_packages():
    from quantize.model import check_rounding
    from quantize.rounding import ROUNDINGS as QUANTIZE_ROUNDINGS

    assert ROUNDINGS == QUANTIZE_ROUNDINGS
    for rounding in ROUNDINGS:
        assert check_rounding(rounding) == rounding


# ---------------------------------------------------------------- records and names


def test_the_record_holds_the_parsed_layer_map_not_the_file(tmp_path):
    spec = tmp_path / "widths.json"
    spec.write_text(json.dumps({"last": "w8a8", "first": "W8A8"}))
    from_file = EvalSettings(quantize="w4a8", layer_bits=str(spec))
    from_text = EvalSettings(quantize="w4a8", layer_bits="first=w8a8,last=w8a8")
    record = describe_transform(from_file, "mobilenet_v1")
    assert record.options == {
        "scheme": "w4a8", "calibration_method": "percentile", "equalize": False,
        "bias_correction": True, "rounding": "auto",
        "layer_bits": {"last": "w8a8", "first": "w8a8"}, "device": "cpu",
        "mixed_precision": False,
    }  # fmt: skip
    # The same map, however given, is the same run: same digest, same folder.
    assert spec_digest(record) == spec_digest(describe_transform(from_text, "mobilenet_v1"))
    assert from_file.folder_name == from_text.folder_name == f"torch-w4a8-lb{FIRST_LAST}"
    spec.write_text(json.dumps({"first": "w8a8", "last": "w6a8"}))  # the file edited
    edited = describe_transform(from_file, "mobilenet_v1")
    assert edited.options["layer_bits"] == {"first": "w8a8", "last": "w6a8"}
    assert spec_digest(edited) != spec_digest(record)
    assert from_file.folder_name != from_text.folder_name


def test_rounding_mixed_precision_and_device_are_recorded():
    settings = EvalSettings(quantize="w4a8", rounding="nearest", mixed_precision=True)
    for model, target in (("mobilenet_v1", 0.98), ("resnet50", 0.99)):
        options = describe_transform(settings, model).options
        assert options["rounding"] == "nearest" and options["layer_bits"] is None
        assert options["mixed_precision"] is True and options["bit_budget"] is None
        assert options["target_agreement"] == target
    budget = describe_transform(replace(settings, bit_budget=5.0), "resnet50").options
    assert budget["bit_budget"] == 5.0
    plain = describe_transform(EvalSettings(quantize="w4a8"), "resnet50").options
    assert "target_agreement" not in plain and "bit_budget" not in plain
    # Learned rounding may round otherwise on CUDA: another digest, the same folder.
    cuda = replace(settings, device="cuda")
    assert spec_digest(describe_transform(cuda, "resnet50")) != spec_digest(
        describe_transform(settings, "resnet50")
    )
    assert cuda.folder_name == settings.folder_name


def test_non_default_choices_get_their_own_folder():
    def out(**settings):
        return default_out_dir("resnet50", EvalSettings(quantize="w4a8", **settings))

    assert out() == "results/resnet50-torch-w4a8"
    assert out(layer_bits="last=w8a8,first=w8a8") == f"results/resnet50-torch-w4a8-lb{FIRST_LAST}"
    assert FIRST_LAST == layer_bits_digest({"first": "w8a8", "last": "w8a8"})[:8]
    assert out(rounding="nearest") == "results/resnet50-torch-w4a8-nearest"
    assert out(rounding="gptq") == "results/resnet50-torch-w4a8-gptq"
    assert out(mixed_precision=True) == "results/resnet50-torch-w4a8-mp"
    assert out(mixed_precision=True, bit_budget=5.0) == "results/resnet50-torch-w4a8-mp5"
    assert out(mixed_precision=True, bit_budget=4.5) == "results/resnet50-torch-w4a8-mp4.5"
    everything = EvalSettings(
        quantize="w4a8", calibration_method="minmax", equalize=True, bias_correction=False,
        layer_bits="first=w8a8,last=w8a8", rounding="gptq", mixed_precision=True, bit_budget=5,
    )  # fmt: skip
    assert everything.folder_name == f"torch-w4a8-minmax-cle-no-bc-lb{FIRST_LAST}-gptq-mp5"
    assert unmodified(everything) == EvalSettings()  # the fp32 reference leaves them all


def test_results_json_quantization_is_what_the_quantizer_reported():
    applied = {
        "scheme": "w4a8", "weight_bits": 4, "layer_bits": {"a": "w8a8", "b": "w4a8"},
        "weight_bits_mean": 5.5, "rounding": "auto", "kernels": "simulated",
    }  # fmt: skip
    record = TransformRecord("quantize w4a8", "w4a8", "quantize", "0" * 64, applied=applied)
    assert quantization_section(record) == {
        "scheme": "w4a8", "layer_bits": {"a": "w8a8", "b": "w4a8"}, "weight_bits_mean": 5.5,
        "rounding": "auto",
    }  # fmt: skip
    record.applied = {**applied, "mixed_precision": {"target_agreement": 0.98}}
    assert quantization_section(record)["mixed_precision"] == {"target_agreement": 0.98}
    record.applied = None
    assert quantization_section(record) is None and quantization_section(None) is None


# ---------------------------------------------------------------- through quantize_model


@pytest.fixture
def captured_quantize(monkeypatch):
    """``quantize.model.quantize_model`` replaced by one that records its arguments and
    returns the model with a report, as the real one's signature will take them."""
    import quantize.model

    calls = []

    def fake(model, calibration, scheme="int8", *, method="percentile", equalize=False,
             bias_correction=True, rounding="auto", layer_bits=None, device="cpu",
             quiet=False, mixed_precision=False, bit_budget=None, target_agreement=0.98,
             store=None):  # fmt: skip
        kwargs = dict(locals())
        del kwargs["model"], kwargs["calibration"], kwargs["calls"]
        calls.append(kwargs)
        model.quantization_record = {
            "scheme": scheme, "layer_bits": {"conv": "w8a8", "fc": "w4a8"},
            "weight_bits_mean": 4.2, "rounding": rounding, "kernels": "simulated",
            **({"mixed_precision": {"bit_budget": bit_budget}} if mixed_precision else {}),
        }  # fmt: skip
        return model

    monkeypatch.setattr(quantize.model, "quantize_model", fake)
    return calls


def test_the_choices_reach_quantize_model_with_the_store(
    caches, toy_convert, captured_quantize, tmp_path, capsys
):
    out = tmp_path / "runs" / "w4a8"
    choices = ["--quantize", "w4a8", "--layer-bits", "last=w8a8", "--rounding", "nearest",
               "--mixed-precision", "--bit-budget", "5"]  # fmt: skip
    code, _, err = run(
        eval_argv("resnet50", caches / "resnet50", toy_convert, out, *choices), capsys
    )
    assert code == 0, err
    (call,) = captured_quantize
    assert call == {
        "scheme": "w4a8", "method": "percentile", "equalize": False, "bias_correction": True,
        "rounding": "nearest", "layer_bits": {"last": "w8a8"}, "device": "cpu", "quiet": True,
        "mixed_precision": True, "bit_budget": 5.0, "target_agreement": 0.99,
        "store": tmp_path / "runs" / "calibrations",
    }  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["quantization"] == {
        "scheme": "w4a8", "layer_bits": {"conv": "w8a8", "fc": "w4a8"},
        "weight_bits_mean": 4.2, "rounding": "nearest", "mixed_precision": {"bit_budget": 5.0},
    }  # fmt: skip
    options = results["transform"]["options"]
    assert options["layer_bits"] == {"last": "w8a8"} and options["target_agreement"] == 0.99
    assert "store" not in options  # a cache: it changes no number


def test_fp32_and_transform_runs_have_no_quantization_section(
    caches, toy_convert, tmp_path, capsys
):
    (tmp_path / "reporting.py").write_text(
        "def method(model, calibration):\n"
        "    model.quantization_record = {'scheme': 'mine', 'layer_bits': {}}\n"
        "    return model\n"
    )
    cache = caches / "resnet50"
    transform = ["--transform", f"{tmp_path / 'reporting.py'}:method"]
    for out, extra in ((tmp_path / "fp32", []), (tmp_path / "mine", transform)):
        code, _, err = run(eval_argv("resnet50", cache, toy_convert, out, *extra), capsys)
        assert code == 0, err
        assert "quantization" not in json.loads((out / "results.json").read_text())
    results = json.loads((tmp_path / "mine" / "results.json").read_text())
    assert results["transform"]["applied"]["scheme"] == "mine"
    assert not (tmp_path / "calibrations").exists()


# ---------------------------------------------------------------- the real quantizer


@pytest.fixture
def mobilenet_convert(monkeypatch, tmp_path):
    """A weights file plus a ``convert.api`` whose load_checkpoint returns a MobileNet-v1 of
    seeded random weights (the real architecture: ``quantize_model`` takes it)."""
    import convert  # noqa: F401  (the package first: its __init__ reads the real convert.api)
    from convert.models import MobileNetV1

    weights = tmp_path / "mobilenet.pth"
    weights.write_bytes(b"random mobilenet weights")
    record = {"model_name": "mobilenet_v1", "num_classes": 1001, "label_offset": 1}

    def load_checkpoint(path, expected_model=None):
        torch.manual_seed(0)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return MobileNetV1().eval(), {**record, "file_sha256": digest}

    fake = types.ModuleType("convert.api")
    fake.load_checkpoint = load_checkpoint
    monkeypatch.setitem(sys.modules, "convert.api", fake)
    return weights


@pytest.mark.slow
def test_w4a8_with_8_bit_first_and_last_layers_end_to_end(
    caches, mobilenet_convert, tmp_path, capsys
):
    out = tmp_path / "mobilenet_v1-torch-w4a8"
    choices = ["--quantize", "w4a8", "--layer-bits", "first=w8a8,last=w8a8",
               "--rounding", "nearest", "--engine", "eager"]  # fmt: skip
    argv = eval_argv("mobilenet_v1", caches / "mobilenet_v1", mobilenet_convert, out, *choices)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    section = results["quantization"]
    assert section["scheme"] == "w4a8" and section["rounding"] == "nearest"
    layers = list(section["layer_bits"].items())
    assert layers[0] == ("features.0", "w8a8") and layers[-1] == ("classifier", "w8a8")
    assert {bits for _, bits in layers[1:-1]} == {"w4a8"}
    assert 4 < section["weight_bits_mean"] < 8
    options = results["transform"]["options"]
    assert options["layer_bits"] == {"first": "w8a8", "last": "w8a8"}
    assert results["images"] == N_IMAGES
