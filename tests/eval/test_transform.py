"""A user's transform through ``python -m eval``: the same evaluation as fp32, plus the fp32
reference, MLPerf's gate and flips.csv; a broken transform is one sentence, nothing written.

The converted model is a toy (``convert.api.load_checkpoint`` returns ``ToyNet``), as in
test_cli.py: these tests are about the transform's path, not the converter.
"""

import csv
import json
import textwrap

import numpy as np
import pytest
import torch

from core.cli import run_cli
from eval.__main__ import main
from eval.method.calibration import CalibrationBatches, names_sha256
from fixtures.images import write_val_set
from preprocess import build_cache, load_cache, normalize
from preprocess.calibration import MLPERF_LIST_SHA256, mlperf_list
from tests.eval.fakes import ToyNet

N_IMAGES = 12
FP32_RIGHT = 8  # the toy fp32 model gets the first 8 images right (labels made so)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """12 images labelled so that the toy converted model (``ToyNet(seed=3)``, what
    ``toy_convert`` loads) is right on exactly the first FP32_RIGHT: a top-1 that is not 0."""
    root = tmp_path_factory.mktemp("transform")
    entries = write_val_set(root / "data", N_IMAGES, layout="val_map", seed=11)
    build_cache("resnet50", root / "data", root / "first", workers=1, quiet=True)
    crops = torch.from_numpy(load_cache(root / "first", "resnet50").normalized(0, N_IMAGES))
    with torch.inference_mode():
        toy = ToyNet(seed=3).eval()(crops.permute(0, 3, 1, 2).contiguous())
    predicted = (toy.argmax(dim=1) - 1).tolist()  # label = argmax - 1
    labels = [p if i < FP32_RIGHT else (p + 1) % 1000 for i, p in enumerate(predicted)]
    lines = "".join(f"{name} {label}\n" for (name, _), label in zip(entries, labels, strict=True))
    (root / "data" / "val_map.txt").write_text(lines)
    build_cache("resnet50", root / "data", root / "cache", workers=1, quiet=True)
    return root / "cache"


def write_transform(path, body: str, name: str = "method") -> str:
    path.write_text(textwrap.dedent(body))
    return f"{path}:{name}"


IDENTITY = """
    from dataclasses import dataclass

    @dataclass
    class Options:  # a file that defines classes imports like any module
        scale: float = 1.0

    def method(model, calibration):
        assert Options().scale == 1.0
        return model
"""

FORCE_CLASS = """
    import torch

    class Forced(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 1001)
            logits[:, {label} + 1] = 1.0  # label = argmax - 1
            return logits

    def method(model, calibration):
        return Forced()
"""


def run(argv, capsys):
    code = run_cli(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def eval_argv(cache_dir, weights, out, *extra):
    return [
        "--model", "resnet50", "--cache-dir", str(cache_dir), "--weights", str(weights),
        "--out", str(out), "--batch-size", "5", "--quiet", *extra,
    ]  # fmt: skip


def test_identity_transform_gives_fp32_predictions_bit_for_bit(
    cache_dir, toy_convert, tmp_path, capsys
):
    assert run(eval_argv(cache_dir, toy_convert, tmp_path / "r-torch"), capsys)[0] == 0
    spec = write_transform(tmp_path / "identity.py", IDENTITY)
    code, out, err = run(
        eval_argv(cache_dir, toy_convert, tmp_path / "r-torch-method", "--transform", spec), capsys
    )
    assert code == 0, err
    fp32 = np.load(tmp_path / "r-torch" / "top5.npy")
    mine = np.load(tmp_path / "r-torch-method" / "top5.npy")
    np.testing.assert_array_equal(mine, fp32)
    results = json.loads((tmp_path / "r-torch-method" / "results.json").read_text())
    assert results["transform"]["spec"] == spec and results["transform"]["name"] == "method"
    digest = __import__("hashlib").sha256((tmp_path / "identity.py").read_bytes()).hexdigest()
    assert results["transform"]["source_sha256"] == digest
    reference = results["fp32_reference"]
    assert reference["equal_share"] == 1.0 and reference["dir"] == str(tmp_path / "r-torch")
    assert "digests" in reference["chosen_by"] and reference["images"] == N_IMAGES
    assert results["correct_top1"] == FP32_RIGHT
    gate = results["mlperf_gate"]
    assert gate["required_ratio"] == 0.99 and gate["fp32_top1"] == 100 * FP32_RIGHT / N_IMAGES
    assert gate["ratio"] == 1.0 and gate["passes"] is True
    assert gate["correct"] == gate["fp32_correct"] == FP32_RIGHT
    no_flips = {"file": "flips.csv", "changed": 0, "fixed": 0, "broken": 0, "net": 0}
    assert results["flips"] == no_flips
    assert results["calibration"]["images"] == N_IMAGES
    assert results["calibration"]["mlperf_list"] is False
    assert "not MLPerf's list" in results["calibration"]["note"]
    assert "MLPerf gate" in out and "same as fp32" in out and "layers vs fp32" in out
    layers = json.loads((tmp_path / "r-torch-method" / "layers.json").read_text())
    assert [row["layer"] for row in layers["layers"]] == ["logits"]  # a toy: no known blocks
    # float32 noise only (the evaluated module runs channels-last, the reference NCHW)
    assert layers["layers"][0]["sqnr_db"] > 100.0 and layers["first_below_threshold"] is None
    assert results["layers"]["first_below_threshold"] is None


def test_a_transform_forcing_one_class_scores_that_labels_share(
    cache_dir, toy_convert, tmp_path, capsys
):
    labels = load_cache(cache_dir, "resnet50").labels
    assert run(eval_argv(cache_dir, toy_convert, tmp_path / "r-torch"), capsys)[0] == 0
    path = tmp_path / "force.py"
    for label in (int(labels[0]), int(labels[-1]) + 1):  # a present label, then maybe absent
        spec = write_transform(path, FORCE_CLASS.format(label=label))
        out = tmp_path / "r-torch-method"
        assert run(eval_argv(cache_dir, toy_convert, out, "--transform", spec), capsys)[0] == 0
        results = json.loads((out / "results.json").read_text())
        share = 100.0 * float((labels == label).mean())
        assert results["top1"] == pytest.approx(share, abs=1e-4)
        fp32 = np.load(tmp_path / "r-torch" / "predictions.npy")
        rows = list(csv.DictReader((out / "flips.csv").open()))
        assert len(rows) == int((fp32 != label).sum()) == results["flips"]["changed"]
        cache = load_cache(cache_dir, "resnet50")
        for row in rows:
            index = cache.files.index(row["file"])
            assert int(row["label"]) == labels[index] and int(row["method"]) == label
            assert int(row["fp32"]) == fp32[index]
        # right now and wrong in fp32 is "fixed"; right in fp32 and wrong now, "broken"
        for row in rows:
            now_right, was_right = row["method"] == row["label"], row["fp32"] == row["label"]
            assert row["change"] == ("fixed" if now_right else "broken" if was_right else
                                     "both wrong")  # fmt: skip
        fixed = int(((labels == label) & (fp32 != labels)).sum())
        broken = int(((fp32 == labels) & (labels != label)).sum())
        assert (results["flips"]["fixed"], results["flips"]["broken"]) == (fixed, broken)
        assert results["flips"]["net"] == fixed - broken
        gate = results["mlperf_gate"]  # one class can never keep 0.99 of 8 right of 12
        assert gate["fp32_correct"] == FP32_RIGHT and gate["passes"] is False
        assert gate["correct"] == int((labels == label).sum())


def test_the_reference_is_named_or_refused_before_any_work(
    cache_dir, toy_convert, tmp_path, capsys
):
    assert run(eval_argv(cache_dir, toy_convert, tmp_path / "fp32"), capsys)[0] == 0
    spec = write_transform(tmp_path / "identity.py", IDENTITY)
    out = tmp_path / "elsewhere" / "method"
    named = ["--transform", spec, "--reference", str(tmp_path / "fp32")]
    assert run(eval_argv(cache_dir, toy_convert, out, *named), capsys)[0] == 0
    results = json.loads((out / "results.json").read_text())
    assert results["fp32_reference"]["chosen_by"] == "--reference"
    assert results["fp32_reference"]["dir"] == str(tmp_path / "fp32")
    assert results["mlperf_gate"]["passes"] is True
    # a reference made from other weights: one sentence, and no output folder at all
    other = tmp_path / "other.pth"
    other.write_bytes(b"other toy weights")
    refused = tmp_path / "refused"
    argv = eval_argv(cache_dir, other, refused, *named)
    code, stdout, err = run(argv, capsys)
    assert code != 0 and "was made from other weights" in err and err.count("\n") == 1
    assert stdout == "" and not refused.exists()


def test_the_transform_sees_the_calibration_images_normalised_nchw(tmp_path, cache_dir):
    cache = load_cache(cache_dir, "resnet50")
    batches = CalibrationBatches(cache, images=7, batch_size=3)
    got = list(batches)
    assert len(batches) == 3 and [len(b) for b in got] == [3, 3, 1]
    expected = torch.from_numpy(normalize(cache.read(0, 7), "resnet50")).permute(0, 3, 1, 2)
    torch.testing.assert_close(torch.cat(got), expected, rtol=0, atol=0)
    assert got[0].dtype == torch.float32 and got[0].shape[1:] == (3, 224, 224)


def test_the_shipped_mlperf_list_is_recognised_by_its_names():
    listed = mlperf_list()
    assert len(listed.names) == 500 and listed.names[0] == "ILSVRC2012_val_00027145.JPEG"
    assert names_sha256(listed.names) == MLPERF_LIST_SHA256 == listed.sha256


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def method(model, calibration):\n    raise ValueError('no luck')\n",
         "the transform {spec} raised ValueError: no luck"),
        ("def method(model, calibration):\n    return 42\n",
         "the transform {spec} returned int, not a torch.nn.Module"),
        ("import torch\ndef method(model, calibration):\n    return torch.nn.Linear(3, 3)\n",
         "the model returned by the transform {spec} raised RuntimeError"),
        ("import torch\nclass Ten(torch.nn.Module):\n    def forward(self, x):\n"
         "        return torch.zeros(x.shape[0], 10)\n"
         "def method(model, calibration):\n    return Ten()\n",
         "the transform {spec} changed the logits to (2, 10)"),
        ("import not_a_module_anywhere\n", "cannot import transform file {file}"),
        ("def other(model, calibration):\n    return model\n", "has no function 'method'"),
    ],
)  # fmt: skip
def test_a_broken_transform_is_one_sentence_and_writes_nothing(
    cache_dir, toy_convert, tmp_path, capsys, body, message
):
    path = tmp_path / "broken.py"
    path.write_text(body)
    spec = f"{path}:method"
    out = tmp_path / "out"
    code, stdout, err = run(eval_argv(cache_dir, toy_convert, out, "--transform", spec), capsys)
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.format(spec=spec, file=path) in err
    assert "Traceback" not in err and stdout == ""
    assert not (out / "results.json").exists() and not (out / "predictions.npy").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--transform", "no_colon_here"], "is not 'path/to/file.py:function'"),
        (["--transform", "missing/file.py:fn"], "transform file missing/file.py not found"),
        (["--transform", "no.such.module_xyz:fn"], "cannot find the transform module"),
        (["--quantize", "int9"], "--quantize 'int9' is not a scheme"),
        (["--calibration-method", "mse"], "--calibration-method is for --quantize"),
        (["--transform", "a.py:f", "--no-bias-correction"], "is for --quantize; your transform"),
        (["--quantize", "int8", "--backend", "tf"], "--weights is for the torch backend"),
        (["--reference", "some/run"], "--reference names the fp32 run a modified model"),
    ],
)
def test_bad_method_options_are_refused_before_any_work(
    cache_dir, toy_convert, tmp_path, capsys, extra, message
):
    out = tmp_path / "out"
    code, _, err = run(eval_argv(cache_dir, toy_convert, out, *extra), capsys)
    assert code != 0 and message in err, err
    assert not out.exists()


def test_the_readme_example_transform_runs(cache_dir, toy_convert, tmp_path, capsys):
    """The ten-line transform in README.md, as written there, through python -m eval."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split("```python\n# prune.py")[1].split("```")[0]
    (tmp_path / "prune.py").write_text("# prune.py" + code)
    assert len(code.strip().splitlines()) <= 14
    out = tmp_path / "r-torch-prune"
    argv = eval_argv(cache_dir, toy_convert, out, "--transform", f"{tmp_path / 'prune.py'}:prune")
    code_, _, err = run(argv, capsys)
    assert code_ == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["transform"]["name"] == "prune" and results["images"] == N_IMAGES
