"""The evaluate() API and ``python -m eval`` over a real preprocessed cache.

The converted model is a toy here (``convert.api.load_checkpoint`` is swapped for one
returning ``ToyNet``), so these tests cover the cache, CLI, errors and outputs on their own; the
real converter and TF reference are exercised in test_backends_agree.py.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval as eval_stage
from core.cli import run_cli
from eval.__main__ import main
from fixtures.images import write_val_set
from preprocess import build_cache, load_cache
from tests.eval.fakes import ToyNet

N_IMAGES = 9


@pytest.fixture(scope="module")
def resnet_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    write_val_set(root / "data", N_IMAGES, layout="val_map", seed=5)
    cache_dir = root / "cache"
    build_cache("resnet50", root / "data", cache_dir, workers=1, quiet=True)
    return cache_dir


def test_evaluate_writes_results_for_the_cache(resnet_cache, toy_convert, tmp_path):
    out = tmp_path / "out"
    results = eval_stage.evaluate(
        "resnet50", resnet_cache, weights=toy_convert, batch_size=4, out_dir=out, quiet=True
    )
    cache = load_cache(resnet_cache, "resnet50")
    assert results.images == N_IMAGES
    assert results.cache_fingerprint == cache.fingerprint
    assert results.backend == "torch" and results.device == "cpu"
    written = json.loads((out / "results.json").read_text())
    assert written["weights_sha256"] == (__import__("hashlib").sha256(b"toy weights").hexdigest())
    assert results.images_per_second > 0
    assert written == results.to_json()
    predictions = np.load(out / "predictions.npy")
    assert predictions.shape == (N_IMAGES,) and predictions.dtype == np.int64
    # The predictions are the toy model's argmax - 1 on MLPerf's floats for each image.
    from preprocess import normalize

    x = torch.from_numpy(normalize(cache.images, "resnet50")).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = ToyNet(seed=3)(x).argmax(dim=1).numpy() - 1
    np.testing.assert_array_equal(predictions, expected)
    correct = int((predictions == cache.labels).sum())
    assert results.correct_top1 == correct


def test_batch_size_and_limit_through_the_api(resnet_cache, toy_convert):
    common = {"weights": toy_convert, "quiet": True}
    one = eval_stage.evaluate("resnet50", resnet_cache, batch_size=1, out_dir=None, **common)
    seven = eval_stage.evaluate("resnet50", resnet_cache, batch_size=7, **common)
    assert (one.correct_top1, one.correct_top5) == (seven.correct_top1, seven.correct_top5)
    limited = eval_stage.evaluate("resnet50", resnet_cache, batch_size=2, limit=3, **common)
    assert limited.images == 3 and limited.limit == 3


def test_cli_prints_the_table_and_writes_outputs(resnet_cache, toy_convert, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--model", "resnet50", "--cache-dir", str(resnet_cache), "--weights", str(toy_convert)]
    assert (
        run_cli(main, [*argv, "--batch-size", "7", "--limit", "5", "--out", str(out), "--quiet"])
        == 0
    )
    table = capsys.readouterr().out
    assert "resnet50" in table and "76.456 %" in table and "img/s" in table
    assert "5 of 9" in table
    assert json.loads((out / "results.json").read_text())["images"] == 5
    assert np.load(out / "predictions.npy").shape == (5,)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "missing.pth"], "error: weights file not found: missing.pth"),
        ([], "error: the torch backend needs --weights (a converted .pth file)"),
        (["--backend", "tf", "--weights", "w.pth"], "error: --weights is for the torch backend"),
        (["--backend", "tf", "--checkpoint", "nope.pb"], "error: checkpoint file not found"),
    ],
)
def test_cli_errors_for_model_inputs(resnet_cache, capsys, extra, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default --out (results/...) would appear
    argv = ["--model", "resnet50", "--cache-dir", str(resnet_cache), *extra, "--quiet"]
    assert run_cli(main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_cli_errors_for_the_cache(resnet_cache, toy_convert, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default --out (results/...) would appear
    weights = ["--weights", str(toy_convert), "--quiet"]
    missing = tmp_path / "no_cache"
    assert run_cli(main, ["--model", "resnet50", "--cache-dir", str(missing), *weights]) == 1
    assert capsys.readouterr().err.startswith(f"error: no preprocessed cache at {missing}")
    argv = ["--model", "mobilenet_v1", "--cache-dir", str(resnet_cache), *weights]
    assert run_cli(main, argv) == 1
    assert "was built for resnet50, not mobilenet_v1" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_cli_cuda_without_gpu(resnet_cache, toy_convert, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # where the default --out (results/...) would appear
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--model", "resnet50", "--cache-dir", str(resnet_cache), "--weights", str(toy_convert)]
    assert run_cli(main, [*argv, "--device", "cuda", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda was requested but this PyTorch")
    assert err.endswith("sees no CUDA GPU; use --device cpu")
    assert not (tmp_path / "results").exists()


def test_python_dash_m_eval_reports_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "eval", "--model", "resnet50", "--cache-dir", str(tmp_path / "x"),
         "--weights", str(tmp_path / "w.pth"), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: no preprocessed cache at {tmp_path / 'x'}: " + (
        f"run `python -m preprocess --model resnet50 --cache-dir {tmp_path / 'x'} ...` first"
    )
    assert proc.stdout == ""


def test_compare_names_files_from_a_cache(resnet_cache, tmp_path, capsys):
    from eval.compare import main as compare_main

    a = np.zeros(N_IMAGES, dtype=np.int64)
    b = a.copy()
    b[4] = 7
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    files = load_cache(resnet_cache, "resnet50").files
    assert (
        compare_main(
            [str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--files", str(resnet_cache)]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"agreement: 8/9 ({800 / 9:.3f} %)"
    assert out[-1].split() == ["4", "0", "7", files[4]]
