"""pipeline.run with a user's method: the fp32 run is run (or reused) as its reference, the
method's run goes to its own folder, calibration follows --calibration-list, and the stamps
cover the transform's source: editing it re-evaluates, an unchanged rerun skips."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from fixtures.images import write_val_set
from pipeline.run import main

# Slow: the edit test (three pipeline runs) and int8 (whose time grows most beside other
# work).
pytestmark = pytest.mark.tf

FORCE_CLASS = """
    import torch

    SEEN = []

    class Forced(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 1001)
            logits[:, {label} + 1] = 1.0  # label = argmax - 1
            return logits

    def force(model, calibration):
        assert not model.training
        images = sum(len(batch) for batch in calibration)
        assert images == {calibration_images}, images
        return Forced()
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("method-data")
    write_val_set(root, 8, layout="val_map", seed=7)
    return root


def labels_of(data_dir) -> list[int]:
    return [int(line.split()[1]) for line in (data_dir / "val_map.txt").read_text().splitlines()]


@pytest.mark.slow
def test_a_forced_class_method_and_its_edit(mobilenet_v1_tgz, data_dir, tmp_path, capsys):
    labels = labels_of(data_dir)
    names = [line.split()[0] for line in (data_dir / "val_map.txt").read_text().splitlines()]
    calibration = tmp_path / "cal.txt"
    calibration.write_text("".join(f"{name}\n" for name in names[5:8]))
    transform = tmp_path / "force.py"
    work = tmp_path / "work"
    argv = [
        "--model", "mobilenet_v1", "--work-dir", str(work), "--checkpoint",
        str(mobilenet_v1_tgz), "--data-dir", str(data_dir), "--batch-size", "4", "--quiet",
        "--transform", f"{transform}:force", "--calibration-list", str(calibration),
    ]  # fmt: skip
    model_dir = work / "mobilenet_v1"
    for label in (labels[0], labels[1]):
        body = FORCE_CLASS.format(label=label, calibration_images=3)
        transform.write_text(textwrap.dedent(body))
        assert main(argv) == 0
        method = json.loads((model_dir / "eval-torch-force" / "results.json").read_text())
        share = 100.0 * np.mean(np.asarray(labels) == label)
        assert method["top1"] == pytest.approx(share, abs=1e-4)
        assert method["transform"]["source_sha256"] != ""
        assert method["calibration"]["images"] == 3
        assert method["calibration"]["note"] == "calibrated on evaluation images, not MLPerf's list"
        fp32 = json.loads((model_dir / "eval-torch" / "results.json").read_text())
        assert "transform" not in fp32 and method["fp32_reference"]["top1"] == fp32["top1"]
        assert method["mlperf_gate"]["required_ratio"] == 0.98
        combined = json.loads((model_dir / "results.json").read_text())
        assert combined["top1"] == method["top1"] and combined["fp32_top1"] == fp32["top1"]
        assert combined["calibration_list"]["images"] == 3
        assert (model_dir / "eval-torch-force" / "flips.csv").is_file()
        assert (model_dir / "eval-torch-force" / "layers.json").is_file()
        out = capsys.readouterr().out
        assert "top-1 method" in out and "MLPerf gate" in out
    # Unchanged: every stage is skipped.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "evaluate skipped" in out and "convert skipped" in out


def test_default_calibration_is_the_first_listed_images(mobilenet_v1_tgz, data_dir, tmp_path):
    transform = tmp_path / "force.py"
    transform.write_text(textwrap.dedent(FORCE_CLASS.format(label=3, calibration_images=8)))
    work = tmp_path / "work"
    argv = [
        "--model", "mobilenet_v1", "--work-dir", str(work), "--checkpoint",
        str(mobilenet_v1_tgz), "--data-dir", str(data_dir), "--batch-size", "4", "--quiet",
        "--transform", f"{transform}:force",
    ]  # fmt: skip
    assert main(argv) == 0
    method = json.loads((work / "mobilenet_v1" / "eval-torch-force" / "results.json").read_text())
    assert method["calibration"]["images"] == 8 and method["calibration"]["mlperf_list"] is False


@pytest.mark.slow
def test_quantize_int8_runs_beside_fp32_with_its_verdict(mobilenet_v1_tgz, data_dir, tmp_path):
    work = tmp_path / "work"
    argv = [
        "--model", "mobilenet_v1", "--work-dir", str(work), "--checkpoint",
        str(mobilenet_v1_tgz), "--data-dir", str(data_dir), "--batch-size", "4", "--quiet",
        "--quantize", "int8", "--calibration-method", "minmax",
    ]  # fmt: skip
    assert main(argv) == 0
    model_dir = work / "mobilenet_v1"
    folder = model_dir / "eval-torch-int8-minmax"
    method = json.loads((folder / "results.json").read_text())
    assert method["transform"]["spec"] == "quantize int8"
    assert method["transform"]["options"]["calibration_method"] == "minmax"
    assert method["transform"]["applied"]["kernels"].startswith("int8: oneDNN")
    # The method's note first, then the backend's on why int8 kernels run eager.
    notes = method["engine_notes"]
    assert notes[0] == "model: quantize int8" and notes[1].startswith("int8: oneDNN")
    assert method["engine"] == "eager" and "eager, as fast engines" in notes[1]
    assert 0.0 <= method["fp32_reference"]["equal_share"] <= 1.0
    assert method["mlperf_gate"]["required_ratio"] == 0.98
    fp32 = np.load(model_dir / "eval-torch" / "predictions.npy")
    int8 = np.load(folder / "predictions.npy")
    assert method["fp32_reference"]["equal_predictions"] == int((fp32 == int8).sum())
    layers = json.loads((folder / "layers.json").read_text())
    assert layers["layers"][0]["layer"] == "features.0" and len(layers["layers"]) == 29
