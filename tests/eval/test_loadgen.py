"""LoadGen runs over a synthetic uint8 cache with a fake predictor, and MLPerf-style scoring."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlperf_loadgen")

from core.cli import run_cli  # noqa: E402
from core.errors import UserError  # noqa: E402
from eval.loadgen import (  # noqa: E402
    LoadgenResult,
    accuracy_imagenet,  # noqa: E402
    run_loadgen,
)
from eval.loadgen.accuracy_imagenet import AccuracyScore, score_accuracy_log  # noqa: E402

NUM_IMAGES = 50
NUM_RIGHT = 37
REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeModel:
    """Reads each image's index from pixel (0, 0, 0); right on a fixed subset of 37 images."""

    def __init__(self, labels: np.ndarray, right: np.ndarray):
        self.labels = labels
        self.right = right
        self.batch_sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.uint8 and batch.shape[1:] == (224, 224, 3)
        self.batch_sizes.append(len(batch))
        index = batch[:, 0, 0, 0].astype(np.int64)
        truth = self.labels[index]
        return np.where(self.right[index], truth, (truth + 1) % 1000)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A read-only memory-mapped uint8 cache, like the preprocessed one, and its labels."""
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, size=(NUM_IMAGES, 224, 224, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(NUM_IMAGES)
    labels = rng.integers(0, 1000, size=NUM_IMAGES).astype(np.int64)
    right = np.zeros(NUM_IMAGES, dtype=bool)
    right[rng.permutation(NUM_IMAGES)[:NUM_RIGHT]] = True
    path = tmp_path_factory.mktemp("cache") / "images.npy"
    np.save(path, images)
    return np.load(path, mmap_mode="r"), labels, right


def _no_staging_left(out_dir: Path) -> None:
    leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_accuracy_run_scores_like_mlperf(dataset, tmp_path, scenario):
    images, labels, right = dataset
    model = FakeModel(labels, right)
    out_dir = tmp_path / "run"

    result = run_loadgen(
        images,
        labels,
        model,
        out_dir,
        mode="accuracy",
        scenario=scenario,
        batch_size=8,
        quiet=True,
    )

    assert max(model.batch_sizes) <= 8
    direct_top1 = 100.0 * np.mean(model(images) == labels)
    assert direct_top1 == pytest.approx(74.0)
    assert isinstance(result, LoadgenResult)
    assert result.accuracy_line == "accuracy=74.000%, good=37, total=50"
    assert (result.good, result.total) == (NUM_RIGHT, NUM_IMAGES)
    assert result.top1 == pytest.approx(direct_top1)
    assert result.samples_per_second is None
    assert result.summary_line() == f"{scenario} accuracy: {result.accuracy_line}"
    assert (out_dir / "accuracy.txt").read_text() == result.accuracy_line + "\n"
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "loadgen_result.json"):
        assert (out_dir / name).is_file()
    assert json.loads((out_dir / "loadgen_result.json").read_text())["good"] == NUM_RIGHT
    _no_staging_left(out_dir)

    # Every sample answered exactly once, with its predicted label as one float32.
    entries = json.loads((out_dir / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(NUM_IMAGES))
    predicted = model(images)
    for entry in entries:
        data = np.frombuffer(bytes.fromhex(entry["data"]), dtype="<f4")
        assert data.shape == (1,)
        assert data[0] == predicted[entry["qsl_idx"]]


def test_standalone_scoring_counts_first_answer_per_sample(tmp_path):
    def hexf(value: float) -> str:
        return np.array([value], dtype="<f4").tobytes().hex().upper()

    labels = np.array([3, 7, 999, 0], dtype=np.int64)
    entries = [
        {"seq_id": 0, "qsl_idx": 2, "data": hexf(999)},  # right
        {"seq_id": 1, "qsl_idx": 0, "data": hexf(4)},  # wrong
        {"seq_id": 2, "qsl_idx": 1, "data": hexf(7)},  # right
        {"seq_id": 3, "qsl_idx": 0, "data": hexf(3)},  # duplicate: ignored, stays wrong
    ]
    log_path = tmp_path / "mlperf_log_accuracy.json"
    log_path.write_text(json.dumps(entries))

    score = score_accuracy_log(log_path, labels)
    assert score == AccuracyScore(good=2, total=3)
    assert score.line() == "accuracy=66.667%, good=2, total=3"

    val_map = tmp_path / "val_map.txt"
    val_map.write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {v}\n" for i, v in enumerate(labels)))
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "labels.npy", labels)
    for source in (["--val-map", str(val_map)], ["--cache-dir", str(cache)]):
        out = subprocess.run(
            [sys.executable, "-m", "eval.accuracy_imagenet", "--quiet",
             "--mlperf-accuracy-file", str(log_path), *source],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout == "accuracy=66.667%, good=2, total=3\n"


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"seq_id": 0, "qsl_idx": 9, "data": "00000000"}], "different data sets"),
        ([{"seq_id": 0, "qsl_idx": 0, "data": ""}], "empty response"),
        ({"not": "a list"}, "not a LoadGen accuracy log"),
    ],
)
def test_standalone_scoring_rejects_bad_logs(tmp_path, entries, message):
    log_path = tmp_path / "mlperf_log_accuracy.json"
    log_path.write_text(json.dumps(entries))
    with pytest.raises(UserError, match=message):
        score_accuracy_log(log_path, np.zeros(4, dtype=np.int64))


def test_cli_reports_a_missing_log_as_one_sentence(tmp_path, capsys):
    val_map = tmp_path / "val_map.txt"
    val_map.write_text("a.JPEG 1\n")
    code = run_cli(
        accuracy_imagenet.main,
        ["--mlperf-accuracy-file", str(tmp_path / "missing.json"), "--val-map", str(val_map)],
    )
    assert code == 1
    assert capsys.readouterr().err.startswith("error: the LoadGen accuracy log")


@pytest.mark.parametrize("scenario", ["Offline", "SingleStream"])
def test_performance_run_reports_throughput_and_latency(dataset, tmp_path, scenario):
    images, labels, right = dataset
    out_dir = tmp_path / "perf"
    out_dir.mkdir()
    (out_dir / "accuracy.txt").write_text("accuracy=99.000%, good=1, total=1\n")  # stale

    result = run_loadgen(
        images, labels, FakeModel(labels, right), out_dir, mode="performance",
        scenario=scenario, batch_size=8, min_duration_s=0.2, min_query_count=16, quiet=True,
    )  # fmt: skip

    assert result.samples_per_second > 0
    for name in ("p50", "p90", "p95", "p99"):
        assert result.latency_ns[name] > 0
    assert result.latency_ns["p50"] <= result.latency_ns["p90"] <= result.latency_ns["p99"]
    assert result.query_count >= (1 if scenario == "Offline" else 16)
    assert isinstance(result.valid, bool)
    assert result.valid or result.invalid_reasons  # an INVALID verdict says why
    assert ("VALID" if result.valid else "INVALID") in result.summary_line()
    assert "samples/s" in result.summary_line()
    # The summary tables read the result back from results.json: the same line.
    stored = json.loads(json.dumps(result.to_json()))
    assert LoadgenResult.from_json(stored).summary_line() == result.summary_line()
    assert result.accuracy_line is None and result.top1 is None
    assert not (out_dir / "accuracy.txt").exists()
    summary = (out_dir / "mlperf_log_summary.txt").read_text()
    assert f"Scenario : {scenario}" in summary and "PerformanceOnly" in summary
    _no_staging_left(out_dir)


def test_invalid_arguments_are_user_errors(dataset, tmp_path):
    images, labels, right = dataset
    model = FakeModel(labels, right)
    with pytest.raises(UserError, match="50 images but 49 labels"):
        run_loadgen(images, labels[:49], model, tmp_path / "a", quiet=True)
    expected = "unknown LoadGen scenario 'Server': expected one of Offline, SingleStream"
    with pytest.raises(UserError, match=f"^{expected}$"):
        run_loadgen(images, labels, model, tmp_path / "a", scenario="Server", quiet=True)
    with pytest.raises(UserError, match="^unknown LoadGen mode 'fast': expected one of "):
        run_loadgen(images, labels, model, tmp_path / "a", mode="fast", quiet=True)
    with pytest.raises(UserError, match="^batch size must be at least 1, got 0$"):
        run_loadgen(images, labels, model, tmp_path / "a", batch_size=0, quiet=True)


# Run in a child process so that a regression that hangs LoadGen fails the test on the
# timeout instead of hanging the whole test session.
FAILING_PREDICTOR_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from eval.loadgen import run_loadgen

    out_dir = Path(sys.argv[1])
    images = np.zeros((20, 224, 224, 3), dtype=np.uint8)
    labels = np.zeros(20, dtype=np.int64)
    calls = []

    def explodes_on_second_batch(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("model exploded")
        return np.zeros(len(batch))

    def wrong_count(batch):
        return np.zeros(len(batch) + 1)

    cases = [
        ("accuracy", "Offline", explodes_on_second_batch),
        ("performance", "SingleStream", explodes_on_second_batch),
        ("accuracy", "SingleStream", wrong_count),
    ]
    for mode, scenario, predict in cases:
        calls.clear()
        (out_dir / "accuracy.txt").write_text("stale\\n")
        try:
            run_loadgen(images, labels, predict, out_dir, mode=mode, scenario=scenario,
                        batch_size=4, min_duration_s=0.2, quiet=True)
        except Exception as err:
            print(f"{mode} {scenario}: {type(err).__name__}: {err}")
        else:
            print(f"{mode} {scenario}: no error")
        assert not (out_dir / "accuracy.txt").exists()
    """
)


def test_predictor_exception_surfaces_instead_of_hanging(tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_PREDICTOR_SCRIPT, str(out_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "accuracy Offline: RuntimeError: model exploded",
        "performance SingleStream: RuntimeError: model exploded",
        "accuracy SingleStream: ValueError: predict_labels returned 2 labels "
        "for a batch of 1 images",
    ]
    _no_staging_left(out_dir)
