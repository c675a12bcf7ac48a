"""``python -m pipeline.run`` as real processes: changed images, racing runs, a zeroed cache.

Each case ends in the right number (the predictions of a fresh evaluation of the data as it
is now) or in one sentence and a non-zero exit, with nothing misleading left behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.files import exclusive_lock
from fixtures.images import textured_image, write_image, write_val_set

# Every test here runs the pipeline as processes: each takes 6 s or more, or needs
# ``first_run`` (about 10 s).
pytestmark = pytest.mark.tf

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "mobilenet_v1"
N_IMAGES = 6


def run_cli(checkpoint: Path, data: Path, work: Path, *extra: str, wait: bool = True):
    """Start ``python -m pipeline.run``; with ``wait``, return the finished process."""
    argv = [
        sys.executable, "-m", "pipeline.run", "--model", MODEL, "--checkpoint", str(checkpoint),
        "--data-dir", str(data), "--work-dir", str(work), "--workers", "1", "--batch-size", "4",
        "--quiet", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if wait:
        proc.stdout_text, proc.stderr_text = proc.communicate(timeout=300)
    return proc


def assert_ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr_text[-2000:]


def fresh_top5(data: Path, weights: Path, scratch: Path) -> np.ndarray:
    """top-5 labels of a fresh evaluation of ``data`` as it is now (new cache, same weights)."""
    from eval import evaluate
    from preprocess import build_cache

    shutil.rmtree(scratch, ignore_errors=True)
    build_cache(MODEL, data, scratch / "cache", workers=1, quiet=True)
    evaluate(MODEL, scratch / "cache", weights=weights, batch_size=4, out_dir=scratch, quiet=True)
    return np.load(scratch / "top5.npy")


def reported(work: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    model_dir = work / MODEL
    combined = json.loads((model_dir / "results.json").read_text())
    predictions = np.load(model_dir / "eval-torch" / "predictions.npy")
    top5 = np.load(model_dir / "eval-torch" / "top5.npy")
    return combined, predictions, top5


@pytest.fixture(scope="module")
def first_run(mobilenet_v1_pb, tmp_path_factory):
    root = tmp_path_factory.mktemp("stale")
    data, work = root / "data", root / "work"
    write_val_set(data, N_IMAGES, layout="val_map", seed=21)
    assert_ok(run_cli(mobilenet_v1_pb, data, work))
    return mobilenet_v1_pb, data, work, root


@pytest.mark.slow
def test_an_overwritten_image_redoes_evaluation_and_matches_a_fresh_run(first_run):
    checkpoint, data, work, root = first_run
    _, _, before = reported(work)
    photo = data / "ILSVRC2012_val_00000003.JPEG"
    write_image(photo, textured_image(300, 420, seed=9_999))  # another photo, same name

    assert_ok(run_cli(checkpoint, data, work))
    combined, predictions, top5 = reported(work)
    expected = fresh_top5(data, work / MODEL / "model.pth", root / "fresh-overwrite")
    assert not np.array_equal(before[2], expected[2])  # a stale result could not pass
    np.testing.assert_array_equal(top5, expected)
    np.testing.assert_array_equal(predictions, expected[:, 0])
    assert combined["stages"]["evaluate"] == "ran"
    assert combined["stages"]["convert"].startswith("skipped")
    assert combined["correct_top1"] == int((expected[:, 0] == _labels(data)).sum())


@pytest.mark.slow
def test_a_deleted_image_redoes_evaluation_and_matches_a_fresh_run(first_run):
    checkpoint, data, work, root = first_run
    (data / "ILSVRC2012_val_00000005.JPEG").unlink()
    val_map = data / "val_map.txt"
    lines = val_map.read_text().splitlines(keepends=True)
    val_map.write_text("".join(line for line in lines if "_00000005." not in line))

    assert_ok(run_cli(checkpoint, data, work))
    combined, predictions, top5 = reported(work)
    expected = fresh_top5(data, work / MODEL / "model.pth", root / "fresh-delete")
    assert combined["images"] == N_IMAGES - 1
    np.testing.assert_array_equal(top5, expected)
    np.testing.assert_array_equal(predictions, expected[:, 0])


@pytest.mark.slow
def test_zeroed_cache_under_force_is_repaired_and_gives_the_right_number(first_run):
    checkpoint, data, work, root = first_run
    images = np.load(work / MODEL / "cache" / "images.npy", mmap_mode="r+")
    images[:] = 0
    images.flush()
    del images

    # --force re-crops every image: the damage is repaired, not evaluated.
    assert_ok(run_cli(checkpoint, data, work, "--force"))
    expected = fresh_top5(data, work / MODEL / "model.pth", root / "fresh-zeroed")
    _, predictions, top5 = reported(work)
    np.testing.assert_array_equal(top5, expected)
    np.testing.assert_array_equal(predictions, expected[:, 0])


def _labels(data: Path) -> np.ndarray:
    lines = (data / "val_map.txt").read_text().split("\n")
    return np.array([int(line.split()[1]) for line in lines if line.strip()])


# ---------------------------------------------------------------- one writer per work dir


def _wait_for_holder(lock_file: Path, pid: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_file.exists() and f"process {pid} " in lock_file.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never took {lock_file}")


@pytest.mark.slow
def test_racing_runs_on_one_work_dir_the_second_exits_naming_the_first(mobilenet_v1_pb, tmp_path):
    data_a, data_b, work = tmp_path / "a", tmp_path / "b", tmp_path / "work"
    write_val_set(data_a, 5, layout="val_map", seed=31)
    write_val_set(data_b, 4, layout="val_map", seed=32)

    first = run_cli(mobilenet_v1_pb, data_a, work, wait=False)
    _wait_for_holder(work / MODEL / ".lock", first.pid)
    second = run_cli(mobilenet_v1_pb, data_b, work)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]

    assert second.returncode == 1
    message = second.stderr_text.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert f"work dir {work / MODEL} is in use by process {first.pid}" in message

    # The survivor's cache, manifest and numbers are set A's, whole.
    from preprocess import load_cache

    cache = load_cache(work / MODEL / "cache", MODEL)
    assert cache.files == [line.split()[0] for line in (data_a / "val_map.txt").open()]
    expected = fresh_top5(data_a, work / MODEL / "model.pth", tmp_path / "fresh-a")
    _, predictions, top5 = reported(work)
    np.testing.assert_array_equal(top5, expected)
    fresh = load_cache(tmp_path / "fresh-a" / "cache", MODEL)
    np.testing.assert_array_equal(cache.read(0, len(cache)), fresh.read(0, len(fresh)))


@pytest.mark.slow
def test_wait_runs_after_the_holder_lets_go(mobilenet_v1_pb, first_run, tmp_path):
    _, data, work, _ = first_run
    other = tmp_path / "other"
    write_val_set(other, 4, layout="val_map", seed=33)
    with exclusive_lock(work / MODEL, "work dir"):
        waiting = run_cli(mobilenet_v1_pb, other, work, "--wait", wait=False)
        time.sleep(3)
        assert waiting.poll() is None  # waiting for the lock, not failed
    _, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err[-2000:]
    _, predictions, top5 = reported(work)
    expected = fresh_top5(other, work / MODEL / "model.pth", tmp_path / "fresh-other")
    np.testing.assert_array_equal(top5, expected)
