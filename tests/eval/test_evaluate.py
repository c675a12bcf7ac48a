import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from eval.evaluate import run_evaluation
from eval.metrics import labels_from_classes, top_k_classes
from eval.options import EvalSettings
from eval.results import RESULTS_FILE, build_result, write_outputs
from tests.eval.fakes import FakeCache, ToyBackend, accuracy, toy_logits

REQUIRED_KEYS = {
    "model", "backend", "images", "top1", "top5", "correct_top1", "correct_top5",
    "reference_top1", "images_per_second", "device", "cache_fingerprint", "batch_size",
    "timestamp", "versions",
}  # fmt: skip


def test_predictions_and_counts_match_direct_computation():
    cache = FakeCache(n=23)
    outcome = run_evaluation(ToyBackend(), cache, batch_size=5, quiet=True)
    logits = toy_logits(cache.images)
    expected_top5 = labels_from_classes(top_k_classes(logits), 1)
    np.testing.assert_array_equal(outcome.top5, expected_top5)
    np.testing.assert_array_equal(outcome.predictions, np.argmax(logits, axis=1) - 1)
    assert outcome.predictions.dtype == np.int64
    direct = accuracy(logits, cache.labels, label_offset=1)
    assert outcome.counter == direct
    assert outcome.counter.images == 23


def test_labels_that_match_the_predictions_score_100_percent():
    cache = FakeCache(n=9)
    cache.labels = np.argmax(toy_logits(cache.images), axis=1) - 1  # offset 1 from profile
    outcome = run_evaluation(ToyBackend(), cache, batch_size=4, quiet=True)
    assert outcome.counter.top1 == 100.0 and outcome.counter.top5 == 100.0


def test_batch_size_does_not_change_results():
    cache = FakeCache(n=23)
    one = run_evaluation(ToyBackend(), cache, batch_size=1, quiet=True)
    backend = ToyBackend()
    seven = run_evaluation(backend, cache, batch_size=7, quiet=True)
    assert backend.batch_sizes == [7, 7, 7, 2]
    np.testing.assert_array_equal(one.predictions, seven.predictions)
    np.testing.assert_array_equal(one.top5, seven.top5)
    assert one.counter == seven.counter


def test_limit_evaluates_the_first_images_only():
    cache = FakeCache(n=23)
    full = run_evaluation(ToyBackend(), cache, batch_size=4, quiet=True)
    part = run_evaluation(ToyBackend(), cache, batch_size=4, limit=6, quiet=True)
    assert part.counter.images == 6
    np.testing.assert_array_equal(part.predictions, full.predictions[:6])
    more = run_evaluation(ToyBackend(), cache, batch_size=4, limit=100, quiet=True)
    assert more.counter.images == 23
    with pytest.raises(UserError, match="--limit must be at least 1"):
        run_evaluation(ToyBackend(), cache, limit=0, quiet=True)
    with pytest.raises(UserError, match="--batch-size must be at least 1"):
        run_evaluation(ToyBackend(), cache, batch_size=0, quiet=True)


class SlowImages:
    """Cache images whose reads take a while, to check the timing excludes them."""

    def __init__(self, images, delay):
        self.images, self.delay = images, delay

    def __getitem__(self, key):
        time.sleep(self.delay)
        return self.images[key]


class SlowBackend(ToyBackend):
    def logits(self, u8_nhwc):
        time.sleep(0.02)
        return super().logits(u8_nhwc)


def test_throughput_counts_inference_time_only():
    cache = FakeCache(n=8)
    cache.images = SlowImages(cache.images, delay=0.1)
    outcome = run_evaluation(SlowBackend(), cache, batch_size=2, quiet=True)
    assert 0.08 <= outcome.inference_seconds < 0.3  # 4 batches x 20 ms, no 100 ms reads
    assert outcome.wall_seconds >= 0.4  # the reads did happen
    assert outcome.images_per_second == pytest.approx(8 / outcome.inference_seconds)


class BrokenImages:
    def __getitem__(self, key):
        raise OSError("disk went away")


def test_reader_errors_reach_the_caller():
    cache = FakeCache(n=8)
    cache.images = BrokenImages()
    with pytest.raises(OSError, match="disk went away"):
        run_evaluation(ToyBackend(), cache, batch_size=2, quiet=True)


def test_empty_cache_is_a_user_error():
    with pytest.raises(UserError, match="no images"):
        run_evaluation(ToyBackend(), FakeCache(n=0), quiet=True)


def make_results(n=11):
    cache = FakeCache(n=n)
    backend = ToyBackend()
    outcome = run_evaluation(backend, cache, batch_size=4, quiet=True)
    result = build_result(backend, outcome, cache, "/tmp/cache", EvalSettings(batch_size=4))
    return cache, outcome, result


def test_results_hold_every_key_and_files_are_written(tmp_path):
    cache, outcome, result = make_results()
    results = result.to_json()
    assert REQUIRED_KEYS <= set(results)
    assert "top5_labels" not in results and "backend_info" not in results
    assert "loadgen" not in results and "fp32_reference" not in results
    assert results["model"] == "resnet50"
    assert results["backend"] == "toy"
    assert results["images"] == 11
    assert results["reference_top1"] == 76.456
    assert results["cache_fingerprint"] == cache.fingerprint
    assert set(results["versions"]) >= {"torch", "tensorflow", "numpy", "opencv"}
    assert results["top1"] == pytest.approx(100 * results["correct_top1"] / 11, abs=1e-4)

    out = tmp_path / "out"
    write_outputs(out, result)
    assert sorted(p.name for p in out.iterdir()) == [
        "predictions.npy",
        "results.json",
        "top5.npy",
    ]
    predictions = np.load(out / "predictions.npy")
    assert predictions.dtype == np.int64
    np.testing.assert_array_equal(predictions, outcome.predictions)
    assert np.load(out / "top5.npy").shape == (11, 5)
    # results.json names the predictions.npy beside it by its sha256 (a reference is checked)
    digest = hashlib.sha256((out / "predictions.npy").read_bytes()).hexdigest()
    assert results["predictions_sha256"] is None
    assert json.loads((out / RESULTS_FILE).read_text()) == {**results, "predictions_sha256": digest}


def test_a_failed_write_leaves_the_previous_results_untouched(tmp_path, monkeypatch):
    _, _, result = make_results()
    write_outputs(tmp_path, result)
    before = (tmp_path / RESULTS_FILE).read_text()

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("eval.results.json.dumps", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(tmp_path, replace(result, top1=0.0))
    assert (tmp_path / RESULTS_FILE).read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_final_table_reads_at_a_glance():
    _, _, result = make_results()
    result.images_per_second = 1234.5
    table = result.table()
    for text in ("resnet50", "toy on cpu", "11", "top-1", "top-5", "76.456 %", "1,234.5 img/s"):
        assert text in table
    assert f"{result.top1:.3f} %" in table


def test_killed_evaluation_resumes_from_its_journal(tmp_path):
    """A journal saved part-way is picked up: only the remaining images are evaluated."""
    from eval.evaluate import run_evaluation
    from eval.journal import ResumeJournal
    from tests.eval.fakes import FakeCache, ToyBackend

    cache = FakeCache(n=10, seed=5)
    full = run_evaluation(ToyBackend("resnet50"), cache, batch_size=3, quiet=True)

    journal = ResumeJournal(tmp_path / "resume.npz", key="run-a")
    journal.save(full.top5, 6)  # as if killed after 6 images
    counting = ToyBackend("resnet50")
    resumed = run_evaluation(counting, cache, batch_size=3, quiet=True, journal=journal)
    assert sum(counting.batch_sizes) == 4
    assert resumed.resumed_from == 6
    np.testing.assert_array_equal(resumed.predictions, full.predictions)
    np.testing.assert_array_equal(resumed.top5, full.top5)
    assert resumed.counter.correct_top1 == full.counter.correct_top1

    other = ResumeJournal(tmp_path / "resume.npz", key="run-b")  # different inputs: ignored
    fresh = ToyBackend("resnet50")
    run_evaluation(fresh, cache, batch_size=3, quiet=True, journal=other)
    assert sum(fresh.batch_sizes) == 10


def test_result_json_holds_the_optional_parts_only_when_they_apply():
    from eval.loadgen import LoadgenResult
    from eval.method.reference import Fp32Reference

    _, _, result = make_results()
    bf16 = replace(result, backend_info={"precision": "bf16", "device_name": "gpu"})
    data = bf16.to_json()
    assert data["precision"] == "bf16" and data["fp32_reference"] is None
    assert list(data)[-4:] == ["device_name", "world_size", "predictions_sha256", "fp32_reference"]
    bf16.fp32_reference = Fp32Reference(
        Path("/runs/fp32"), "--reference", 11, "resnet50", "c", "w", "p", 50.0, 10, 0.9
    )
    bf16.loadgen = LoadgenResult("accuracy", "Offline", Path("/runs/lg"), 11, accuracy_line="a")
    data = json.loads(json.dumps(bf16.to_json()))
    assert data["fp32_reference"] == {
        "dir": "/runs/fp32", "chosen_by": "--reference", "images": 11, "model": "resnet50",
        "cache_fingerprint": "c", "weights_sha256": "w", "predictions_sha256": "p",
        "top1": 50.0, "equal_predictions": 10, "equal_share": 0.9,
    }  # fmt: skip
    assert data["loadgen"]["out_dir"] == "/runs/lg" and data["loadgen"]["accuracy_line"] == "a"
    assert "LoadGen" in bf16.table() and "Offline accuracy: a" in bf16.table()


def test_a_damaged_resume_journal_is_ignored_not_trusted(tmp_path):
    from eval.journal import ResumeJournal

    path = tmp_path / "journal.npz"
    top5 = np.arange(20, dtype=np.int64).reshape(4, 5)
    ResumeJournal(path, "key").save(top5, 3)
    restored = np.zeros_like(top5)
    assert ResumeJournal(path, "key").restore(restored, 4) == 3
    assert np.array_equal(restored[:3], top5[:3])
    assert ResumeJournal(path, "other run").restore(np.zeros_like(top5), 4) == 0
    with np.load(path) as saved:  # the same journal with one label changed
        fields = {name: saved[name] for name in saved.files}
    fields["top5"] = fields["top5"].copy()
    fields["top5"][0, 0] = 99
    np.savez(path, **fields)
    assert ResumeJournal(path, "key").restore(np.zeros_like(top5), 4) == 0
    data = bytearray(path.read_bytes())  # a flipped byte inside the archive
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert ResumeJournal(path, "key").restore(np.zeros_like(top5), 4) == 0
