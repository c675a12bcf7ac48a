"""The fp32 reference of a modified run: named with --reference or matched by digests among
the sibling folders (never by age), refused in one sentence when it cannot be trusted."""

import hashlib
import json
import os

import numpy as np
import pytest

from core.errors import UserError
from core.files import exclusive_lock
from eval.method.reference import RunIdentity, find_reference

LABELS = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
MINE = RunIdentity(model="resnet50", cache_fingerprint="c", weights_sha256="w", images=4)


def write_run(folder, predictions, **fields):
    """An eval output folder as write_outputs leaves it (predictions' sha256 included)."""
    folder.mkdir(parents=True)
    predictions = np.asarray(predictions, dtype=np.int64)
    np.save(folder / "predictions.npy", predictions)
    digest = hashlib.sha256((folder / "predictions.npy").read_bytes()).hexdigest()
    results = {"model": "resnet50", "cache_fingerprint": "c", "weights_sha256": "w",
               "precision": "fp32", "images": len(predictions),
               "correct_top1": int((predictions == LABELS[: len(predictions)]).sum()),
               "predictions_sha256": digest, **fields}  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_the_sibling_with_matching_digests_is_chosen_not_the_newest(tmp_path):
    fp32 = write_run(tmp_path / "resnet50-torch", [1, 2, 0, 4, 5])  # covers more images
    newer = write_run(tmp_path / "zz-newer", [9, 9, 9, 9], weights_sha256="x")
    write_run(tmp_path / "resnet50-torch-tf32", [1, 2, 3, 4], precision="tf32")
    write_run(tmp_path / "resnet50-torch-prune", [1, 2, 3, 4], transform={"spec": "p"})
    os.utime(fp32 / "results.json", (1, 1))  # the oldest by far
    assert newer.stat().st_mtime > 1
    found = find_reference(MINE, LABELS, tmp_path / "resnet50-torch-bf16", None)
    assert found.dir == fp32 and found.images == 5 and "digests" in found.chosen_by
    np.testing.assert_array_equal(found.predictions, [1, 2, 0, 4])  # this run's images
    assert found.weights_sha256 == "w" and found.cache_fingerprint == "c"


def test_no_fitting_sibling_means_no_reference(tmp_path):
    write_run(tmp_path / "other-cache", [1, 2, 3, 4], cache_fingerprint="d")
    write_run(tmp_path / "fewer", [1, 2, 3])
    assert find_reference(MINE, LABELS, tmp_path / "mine", None) is None


def test_fitting_siblings_that_disagree_are_refused(tmp_path):
    write_run(tmp_path / "a", [1, 2, 3, 4])
    write_run(tmp_path / "b", [1, 2, 3, 4, 0])  # agrees on this run's four images
    assert find_reference(MINE, LABELS, tmp_path / "mine", None).dir == tmp_path / "a"
    write_run(tmp_path / "c", [1, 2, 0, 4])
    with pytest.raises(UserError, match="disagree on 1 images: name the reference"):
        find_reference(MINE, LABELS, tmp_path / "mine", None)


@pytest.mark.parametrize(
    ("fields", "predictions", "reason"),
    [
        ({"weights_sha256": "x"}, [1, 2, 3, 4], "was made from other weights"),
        ({"cache_fingerprint": "d"}, [1, 2, 3, 4], "was evaluated on another cache"),
        ({"model": "mobilenet_v1"}, [1, 2, 3, 4], "is a run of another model"),
        ({}, [1, 2, 3], "covers 3 images, fewer than this run's 4"),
        ({"precision": "bf16"}, [1, 2, 3, 4], "is not an unmodified fp32 run"),
        ({"transform": {"spec": "x"}}, [1, 2, 3, 4], "is not an unmodified fp32 run"),
    ],
)
def test_a_named_reference_that_does_not_fit_is_one_sentence(tmp_path, fields, predictions, reason):
    named = write_run(tmp_path / "named", predictions, **fields)
    with pytest.raises(UserError, match=reason) as caught:
        find_reference(MINE, LABELS, tmp_path / "mine", named)
    assert str(caught.value).startswith(f"--reference {named} ")
    assert "\n" not in str(caught.value)


def test_a_named_reference_is_used_and_says_so(tmp_path):
    named = write_run(tmp_path / "elsewhere" / "fp32", [1, 2, 3, 4])
    found = find_reference(MINE, LABELS, tmp_path / "mine", named)
    assert found.dir == named and found.chosen_by == "--reference"
    with pytest.raises(UserError, match="holds no readable results.json"):
        find_reference(MINE, LABELS, None, tmp_path / "elsewhere")


def test_predictions_that_are_not_the_recorded_ones_are_refused(tmp_path):
    folder = write_run(tmp_path / "resnet50-torch", [1, 2, 3, 4])
    np.save(folder / "predictions.npy", np.array([1, 2, 3, 0], dtype=np.int64))
    with pytest.raises(UserError, match="is not the file its results.json was written with"):
        find_reference(MINE, LABELS, tmp_path / "mine", None)
    # without a recorded digest (older runs), the recorded top-1 is checked instead
    results = json.loads((folder / "results.json").read_text())
    del results["predictions_sha256"]
    (folder / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match="gets 3 images right, not the 4"):
        find_reference(MINE, LABELS, tmp_path / "mine", None)
    np.save(folder / "predictions.npy", np.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(UserError, match="does not hold predicted labels"):
        find_reference(MINE, LABELS, tmp_path / "mine", None)


def test_a_reference_being_written_is_not_read(tmp_path):
    folder = write_run(tmp_path / "resnet50-torch", [1, 2, 3, 4])
    with exclusive_lock(folder, "output dir"), pytest.raises(UserError, match="in use"):
        find_reference(MINE, LABELS, tmp_path / "mine", None)
    assert find_reference(MINE, LABELS, tmp_path / "mine", None).dir == folder
