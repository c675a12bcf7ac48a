"""The GPU check's building blocks on the CPU: data by hard links, TF-free weights, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import gpu_check
from benchmarks.seeded_weights import calibrate_batch_norm, save_converted, seeded_model
from convert.api import load_checkpoint


def test_listing_is_hard_links_of_a_few_jpegs(tmp_path):
    data = gpu_check.make_data(tmp_path, images=10, unique=3)
    folder = tmp_path / "data-10"
    lines = (folder / "val_map.txt").read_text().splitlines()
    assert data["images"] == 10 and len(lines) == 10
    first, fourth = folder / lines[0].split()[0], folder / lines[3].split()[0]
    assert first.stat().st_ino == fourth.stat().st_ino  # image 4 is image 1 again
    assert lines[0].split()[1] == lines[3].split()[1]  # with the same label
    assert first.stat().st_nlink == 1 + 4  # the source and images 1, 4, 7, 10


def test_seeded_calibrated_weights_load_as_a_converted_model(tmp_path):
    torch.manual_seed(0)
    crops = torch.randn(4, 3, 224, 224)
    module = calibrate_batch_norm(seeded_model("mobilenet_v1", seed=3), crops)
    assert not module.training
    path = save_converted(module, "mobilenet_v1", tmp_path / "m.pth")
    loaded, record = load_checkpoint(path, expected_model="mobilenet_v1")
    assert record["label_offset"] == 1 and record["num_classes"] == 1001
    with torch.inference_mode():
        logits = loaded(crops)
    assert torch.equal(logits, module(crops))
    # Statistics measured on the crops keep the logits spread, not collapsed to one class.
    assert logits.std(dim=1).min() > 1e-3


def test_agreement_and_report(tmp_path):
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    for folder, rows in ((ours, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]),
                         (ref, [[1, 2, 3, 4, 5], [6, 7, 8, 0, 9]])):  # fmt: skip
        folder.mkdir()
        np.save(folder / "top5.npy", np.array(rows, dtype=np.int64))
    agree = gpu_check.agreement(ours, ref, 2)
    assert agree == {"compared": 2, "top1_equal": 2, "top5_equal": 1}
    report = gpu_check.Report(tmp_path, {"environment": {}})
    report.record("step", {"x": 1})
    gpu_check.check_agree(report, "ours vs ref", agree)
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["steps"] == {"step": {"x": 1}}
    assert saved["failures"] == [f"ours vs ref: {agree}"]


def test_weights_from_the_gpu_weights_folder_are_used_as_they_are(tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path / "out")])
    assert args.weights_dir == gpu_check.ROOT / "gpu-weights"  # where `make gpu-weights` writes
    folder = tmp_path / "gpu-weights"
    path = save_converted(seeded_model("mobilenet_v1", seed=3).eval(), "mobilenet_v1",
                          folder / "mobilenet_v1.pth")  # fmt: skip
    # No cache exists: a converted file found in the folder needs no calibration crops.
    found = gpu_check.make_weights("mobilenet_v1", tmp_path / "no-cache", tmp_path, folder)
    assert found == {"weights": str(path), "source": "converted from the fixture graph"}


def test_without_cuda_the_check_fails_in_one_sentence_instead_of_passing(
    tmp_path, monkeypatch, capsys
):
    from core.cli import run_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    assert run_cli(gpu_check.main, argv) == 1
    captured = capsys.readouterr()
    assert "passed" not in captured.out
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "no CUDA GPU" in captured.err and "--device cpu" in captured.err
    assert not (tmp_path / "out" / "gpu_check.json").exists()


@pytest.mark.parametrize("option", ["--images", "--unique", "--subset", "--workers", "--nproc"])
def test_counts_must_be_positive(tmp_path, capsys, option):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(tmp_path), option, "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_gpu_weights_takes_out_and_still_the_old_dir(tmp_path, capsys):
    from benchmarks import gpu_weights

    assert gpu_weights.parse_args([]).out == gpu_weights.DEFAULT_DIR
    assert gpu_weights.parse_args(["--out", "a"]).out == gpu_weights.parse_args(["--dir", "a"]).out
    with pytest.raises(SystemExit):
        gpu_weights.parse_args(["--help"])
    assert "--dir" not in capsys.readouterr().out
