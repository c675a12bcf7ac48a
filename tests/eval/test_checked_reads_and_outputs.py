"""Crops reach the backend only through the cache's checked reader; one run per --out folder.

A cache whose reader reports damage ends the evaluation with that sentence and writes no
results; an unwritable --out is refused before any work; a second ``python -m eval`` on the
same --out exits naming the first (or waits with --wait).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from core.files import check_output_dir, exclusive_lock
from eval.evaluate import evaluate, run_evaluation
from eval.loadgen.cache_pass import CacheCrops
from eval.options import EvalSettings
from tests.eval.fakes import FakeCache, ToyBackend

REPO_ROOT = Path(__file__).resolve().parents[2]


class DamagedCache(FakeCache):
    """A cache whose reader finds crop ``bad`` changed since the build, as the real one says."""

    def __init__(self, bad: int, **kwargs):
        super().__init__(**kwargs)
        self.bad = bad
        self.reads: list[tuple[int, int]] = []

    def read(self, start, stop, out=None):
        self.reads.append((start, stop))
        if start <= self.bad < stop:
            raise UserError(f"crop {self.bad} of the cache differs from its build-time digest")
        return super().read(start, stop, out)


def test_evaluation_reads_every_crop_through_the_reader():
    real = FakeCache(n=10)
    reader_only = FakeCache(n=10)
    reader_only.images = np.zeros_like(real.images)  # what a loop reading .images would see
    reader_only.read = real.read  # the checked reader serves the real crops
    outcome = run_evaluation(ToyBackend(), reader_only, batch_size=4, quiet=True)
    expected = run_evaluation(ToyBackend(), real, batch_size=4, quiet=True)
    np.testing.assert_array_equal(outcome.top5, expected.top5)


def test_a_damaged_crop_ends_the_evaluation_with_the_readers_sentence():
    cache = DamagedCache(bad=6, n=10)
    with pytest.raises(UserError, match="crop 6 of the cache differs"):
        run_evaluation(ToyBackend(), cache, batch_size=4, quiet=True)
    assert (4, 8) in cache.reads


def test_cache_crops_reads_index_arrays_as_runs_of_consecutive_crops():
    cache = DamagedCache(bad=-1, n=12)
    crops = CacheCrops(cache, count=10)
    assert len(crops) == 10
    indices = np.array([3, 4, 5, 9, 0, 1])
    np.testing.assert_array_equal(crops[indices], cache.images[indices])
    assert cache.reads == [(3, 6), (9, 10), (0, 2)]
    np.testing.assert_array_equal(crops[2:5], cache.images[2:5])
    np.testing.assert_array_equal(crops[7], cache.images[7])
    with pytest.raises(IndexError):
        crops[np.array([10])]  # beyond ``count``, though the cache holds it


def test_loadgen_reads_crops_through_the_reader(tmp_path):
    pytest.importorskip("mlperf_loadgen")
    from eval.loadgen.cache_pass import run_loadgen_pass

    cache = DamagedCache(bad=-1, n=9)
    settings = EvalSettings(loadgen="accuracy", batch_size=4, quiet=True)
    result = run_loadgen_pass(ToyBackend(), cache, 9, tmp_path / "lg", settings)
    assert result.total == 9
    read = sorted(i for start, stop in cache.reads for i in range(start, stop))
    assert set(read) == set(range(9))

    damaged = DamagedCache(bad=5, n=9)
    with pytest.raises(UserError, match="crop 5 of the cache differs"):
        run_loadgen_pass(ToyBackend(), damaged, 9, tmp_path / "lg2", settings)
    assert not (tmp_path / "lg2" / "accuracy.txt").exists()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    from fixtures.images import write_val_set
    from preprocess import build_cache

    root = tmp_path_factory.mktemp("checked")
    write_val_set(root / "data", 3, layout="val_map", seed=8)
    build_cache("resnet50", root / "data", root / "cache", workers=1, quiet=True)
    # A weights file that exists but is never a model: runs that must stop before loading
    # weights would fail on it if they reached that step.
    (root / "not-a-model.pth").write_bytes(b"not a model")
    return root / "cache"


def _weights_never_loaded(cache_dir: Path) -> str:
    return str(cache_dir.parent / "not-a-model.pth")


def test_unwritable_out_is_refused_before_the_weights_are_even_opened(cache_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write to .*a-file/out .*choose a writable --out"):
        evaluate(
            "resnet50", cache_dir, weights=_weights_never_loaded(cache_dir), out_dir=blocker / "out"
        )


def test_read_only_out_folder_is_one_sentence(tmp_path):
    import os

    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running with privileges that ignore folder permissions")
        with pytest.raises(UserError, match="Permission denied.*choose a writable --out"):
            check_output_dir(out)
    finally:
        out.chmod(0o755)


def _eval_cli(cache_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    weights = _weights_never_loaded(cache_dir)
    argv = ["--model", "resnet50", "--cache-dir", str(cache_dir), "--weights", weights]
    return subprocess.Popen(
        [sys.executable, "-m", "eval", *argv, "--out", str(out), "--quiet", *extra],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_second_run_on_the_same_out_exits_naming_the_holder_or_waits(cache_dir, tmp_path):
    import os

    out = tmp_path / "out"
    with exclusive_lock(out, "output dir"):
        refused = _eval_cli(cache_dir, out)
        _, err = refused.communicate(timeout=120)
        assert refused.returncode == 1
        err = err.strip()
        assert err.startswith("error: ") and "\n" not in err
        assert f"output dir {out} is in use by process {os.getpid()}" in err
        assert "--wait" in err

        waiting = _eval_cli(cache_dir, out, "--wait")
        time.sleep(3)
        assert waiting.poll() is None  # blocked on the lock, not failed
    # Lock released: the waiting run goes on (and stops at the weights, not a model).
    _, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 1
    assert "not-a-model.pth" in err and "in use" not in err


def test_zeroed_cache_ends_python_m_eval_in_one_sentence_and_no_results(cache_dir, tmp_path):
    import shutil

    damaged = tmp_path / "cache"
    shutil.copytree(cache_dir, damaged)
    images = np.load(damaged / "images.npy", mmap_mode="r+")
    images[:] = 0  # what a zeroed images.npy looks like to every reader
    images.flush()
    del images
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "eval", "--model", "resnet50", "--cache-dir", str(damaged),
         "--weights", _weights_never_loaded(cache_dir), "--out", str(out), "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert f"the cache at {damaged} is damaged: image 0" in err and "rerun preprocess" in err
    assert not (out / "results.json").exists() and not (out / "predictions.npy").exists()


def test_converted_model_with_an_unknown_field_is_one_sentence_before_evaluating(
    cache_dir, tmp_path
):
    import torch

    from convert.api import FORMAT

    weights = tmp_path / "edited.pth"
    payload = {
        "format": FORMAT, "model_name": "resnet50", "num_classes": 1001, "label_offset": 1,
        "bn_epsilons": {}, "bn_encoding": {}, "source_file": "resnet50_v1.pb",
        "source_sha256": "0" * 64, "state_dict": {}, "content_sha256": "0" * 64,
        "bn_momentum": 0.1,  # a field no converter wrote
    }  # fmt: skip
    torch.save(payload, weights)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "eval", "--model", "resnet50", "--cache-dir", str(cache_dir),
         "--weights", str(weights), "--out", str(out), "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "unknown field 'bn_momentum'" in err
    assert not (out / "results.json").exists() and not (out / "resume.npz").exists()


@pytest.mark.parametrize("width, offset", [(1001, 1), (1000, 0)])
def test_tf_backend_takes_the_label_offset_from_the_graphs_logits_width(width, offset):
    from core.profiles import get_profile
    from eval.backends import TFBackend

    class FakeRunner:
        def logits(self, x):
            return np.zeros((len(x), width), dtype=np.float32)

    backend = TFBackend.__new__(TFBackend)  # the graph itself is replaced by FakeRunner
    super(TFBackend, backend).__init__(get_profile("resnet50"), "cpu")
    backend.runner, backend._label_offset = FakeRunner(), None
    crops = np.zeros((2, 224, 224, 3), dtype=np.uint8)
    assert backend.logits(crops).shape == (2, width)
    assert backend.label_offset == offset

    backend.runner.logits = lambda x: np.zeros((len(x), 2001 - width), dtype=np.float32)
    with pytest.raises(UserError, match=r"logits of shape \(2, \d+\), expected \(2, " + str(width)):
        backend.logits(crops)  # a width that changes between batches is refused


def test_a_killed_runs_temporaries_in_out_are_removed_and_nothing_else(tmp_path):
    from eval.evaluate import remove_stale_run_files

    (tmp_path / ".loadgen.ab12cd34.tmp").mkdir()  # LoadGen's log folder, as mkdtemp names it
    (tmp_path / ".loadgen.ab12cd34.tmp" / "mlperf_log_summary.txt").write_text("half")
    (tmp_path / ".resume.npz.x_9Yz0qW.tmp").write_bytes(b"half")
    (tmp_path / ".notes.tmp").mkdir()  # not a name a run gives its temporaries
    (tmp_path / "results.json").write_text("{}")
    remove_stale_run_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "results.json"]


def test_a_tf_run_restored_whole_from_its_journal_still_knows_its_label_offset(tmp_path):
    """Killed after its last journal save but before results.json: the rerun runs no batch."""
    from core.profiles import get_profile
    from eval.backends import TFBackend
    from eval.journal import ResumeJournal
    from eval.results import build_result

    class FakeRunner:
        calls: list[int] = []
        source_sha256 = "digest of the graph as parsed"

        def logits(self, x):
            self.calls.append(len(x))
            return np.zeros((len(x), 1001), dtype=np.float32)

    checkpoint = tmp_path / "graph.pb"
    checkpoint.write_bytes(b"frozen graph")
    backend = TFBackend.__new__(TFBackend)  # the graph itself is replaced by FakeRunner
    super(TFBackend, backend).__init__(get_profile("resnet50"), "cpu")
    backend.runner, backend._label_offset = FakeRunner(), None
    backend.checkpoint_path = checkpoint
    cache = FakeCache(6, seed=4)
    top5 = np.tile(np.arange(5, dtype=np.int64), (6, 1))
    journal = ResumeJournal(tmp_path / "resume.npz", key="tf-run")
    journal.save(top5, 6)  # every image was finished before the kill
    outcome = run_evaluation(backend, cache, batch_size=4, quiet=True, journal=journal)
    assert outcome.resumed_from == 6 and np.array_equal(outcome.top5, top5)
    settings = EvalSettings(backend="tf", checkpoint=checkpoint, batch_size=4)
    result = build_result(backend, outcome, cache, tmp_path, settings, 1)
    assert result.label_offset == 1 and result.images == 6
    assert FakeRunner.calls == [1]  # one blank crop asked the graph for its width
