"""MLPerf LoadGen runs over the preprocessed uint8 cache.

As in MLPerf's reference, the query sample library loads the samples LoadGen asks for
(through the cache's digest-checked reader) and the SUT answers each with its predicted
label as one little-endian float32. LoadGen logs into a temporary folder beside
``out_dir``, moved in only after a successful run, ``accuracy.txt`` and
``loadgen_result.json`` last: those two never describe a failed run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.cli import check_at_least_one
from core.errors import UserError
from core.records import Record
from eval.loadgen.accuracy_imagenet import score_accuracy_log
from eval.options import LOADGEN_MODES, SCENARIOS, check_choice

log = logging.getLogger(__name__)

ACCURACY_TXT = "accuracy.txt"
RESULT_JSON = "loadgen_result.json"
# Files that describe a finished run: removed before a run, written last after it.
MARKER_FILES = (ACCURACY_TXT, RESULT_JSON)
# MLPerf's ImageNet performance sample count (mlperf.conf): how many samples stay loaded.
DEFAULT_PERFORMANCE_SAMPLE_COUNT = 1024
# Detail-log percentile -> result name: "50.00" -> "p50", ..., "99.90" -> "p99.9".
LATENCY_PERCENTILES = {f"{p:.2f}": f"p{p:g}" for p in (50, 90, 95, 97, 99, 99.9)}
# The Python SUT's own per-sample bookkeeping (gather, response objects) tops out near this
# rate on a CPU; a faster predict_labels must not make the one Offline query huge.
MAX_ESTIMATED_SAMPLES_PER_SECOND = 50_000.0

PredictLabels = Callable[[np.ndarray], Any]


@dataclass
class LoadgenResult(Record):
    """What one LoadGen run measured; accuracy fields in accuracy mode, the rest otherwise."""

    mode: str
    scenario: str
    out_dir: Path
    num_samples: int  # images in the QSL
    loadgen_errors: list[str] = field(default_factory=list)  # errors LoadGen itself logged
    # Accuracy mode.
    accuracy_line: str | None = None  # "accuracy=XX.XXX%, good=N, total=M"
    top1: float | None = None  # percent, like MLPerf's published numbers
    good: int | None = None
    total: int | None = None
    # Performance mode.
    samples_per_second: float | None = None
    query_count: int | None = None
    latency_ns: dict[str, int] = field(default_factory=dict)  # "p50", "p90", ..., "mean"
    valid: bool | None = None  # LoadGen's own VALID/INVALID verdict
    invalid_reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadgenResult:
        """The result again from its ``to_json()`` form, e.g. as read from results.json."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(**{**values, "out_dir": Path(data["out_dir"])})

    def summary_line(self) -> str:
        """One line for logs and summary tables, e.g. "Offline accuracy: accuracy=...%"."""
        head = f"{self.scenario} {self.mode}"
        if self.mode == "accuracy":
            return f"{head}: {self.accuracy_line}"
        latencies = ", ".join(
            f"{name} {self.latency_ns[name] / 1e6:.2f} ms"
            for name in ("p50", "p90", "p99")
            if name in self.latency_ns
        )
        verdict = "VALID" if self.valid else "INVALID"
        if not self.valid and self.invalid_reasons:
            verdict += f" ({'; '.join(self.invalid_reasons)})"
        return f"{head}: {self.samples_per_second:.1f} samples/s, {latencies}; result {verdict}"


def _import_loadgen():
    try:
        import mlperf_loadgen
    except ImportError:
        raise UserError(
            "MLPerf LoadGen is not installed: pip install mlcommons-loadgen "
            "(or the project's [loadgen] extra)"
        ) from None
    return mlperf_loadgen


class _CacheSUT:
    """Answers LoadGen queries from the cache with predict_labels, one float32 per sample.

    LoadGen calls ``issue_queries`` on its own thread, through C++: an exception escaping
    it would abort the process. So any failure is recorded, every outstanding sample is
    answered with an empty response (LoadGen then finishes instead of waiting forever),
    and the recorded exception is re-raised after the test.
    """

    def __init__(self, lg, images, predict_labels: PredictLabels, batch_size: int, bar: tqdm):
        self.lg = lg
        self.images = images
        self.loaded: dict[int, np.ndarray] = {}  # sample index -> crop, filled by the QSL
        self.predict_labels = predict_labels
        self.batch_size = batch_size
        self.bar = bar
        self.error: BaseException | None = None

    def load_samples(self, indices: Sequence[int]) -> None:
        """QSL callback: read the samples LoadGen is about to query into memory."""
        try:
            wanted = np.fromiter(indices, dtype=np.int64, count=len(indices))
            for index, crop in zip(wanted.tolist(), self.images[wanted], strict=True):
                self.loaded[index] = crop
        except BaseException as err:  # noqa: B036 - must never escape into LoadGen's C++ thread
            self.error = self.error or err

    def unload_samples(self, indices: Sequence[int]) -> None:
        for index in indices:
            self.loaded.pop(int(index), None)

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        if all(int(i) in self.loaded for i in indices):
            return np.stack([self.loaded[int(i)] for i in indices])
        return np.ascontiguousarray(self.images[indices])

    def issue_queries(self, queries: Sequence) -> None:
        done = 0
        try:
            if self.error is None:
                for start in range(0, len(queries), self.batch_size):
                    batch = queries[start : start + self.batch_size]
                    self._answer(batch)
                    done = start + len(batch)
        except BaseException as err:  # noqa: B036 - must never escape into LoadGen's C++ thread
            self.error = err
        if done < len(queries):
            # Empty answers close the queries; the run's result is discarded afterwards.
            self.lg.QuerySamplesComplete(
                [self.lg.QuerySampleResponse(q.id, 0, 0) for q in queries[done:]]
            )

    def _answer(self, queries: Sequence) -> None:
        indices = np.fromiter((q.index for q in queries), dtype=np.int64, count=len(queries))
        batch = self._gather(indices)
        predicted = np.asarray(self.predict_labels(batch)).reshape(-1)
        if predicted.shape[0] != len(queries):
            raise ValueError(
                f"predict_labels returned {predicted.shape[0]} labels "
                f"for a batch of {len(queries)} images"
            )
        # One little-endian float32 per sample, as MLPerf's reference answers ImageNet queries.
        # `answers` must stay alive until QuerySamplesComplete returns: LoadGen reads from it.
        answers = np.ascontiguousarray(predicted, dtype="<f4")
        base, item = answers.ctypes.data, answers.itemsize
        responses = [
            self.lg.QuerySampleResponse(q.id, base + i * item, item) for i, q in enumerate(queries)
        ]
        self.lg.QuerySamplesComplete(responses)
        del answers
        self.bar.update(len(queries))


def estimate_samples_per_second(images, predict_labels: PredictLabels, batch_size: int) -> float:
    """Time gathering and predicting one batch twice (after a warm-up call) to size an
    Offline query; capped at MAX_ESTIMATED_SAMPLES_PER_SECOND."""
    count = min(batch_size, len(images))
    predict_labels(np.ascontiguousarray(images[:count]))  # warm-up: allocation, thread pools
    start = time.perf_counter()
    for _ in range(2):
        predict_labels(np.ascontiguousarray(images[np.arange(count)]))
    elapsed = max(time.perf_counter() - start, 1e-9)
    return min(2 * count / elapsed, MAX_ESTIMATED_SAMPLES_PER_SECOND)


def _parse_detail_log(path: Path) -> tuple[dict[str, Any], list[str]]:
    """mlperf_log_detail.txt's ``:::MLLOG {json}`` lines: key -> value, and error messages."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    with open(path) as f:
        for line in f:
            if not line.startswith(":::MLLOG "):
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line[len(":::MLLOG ") :])
                values[entry["key"]] = entry["value"]
                if entry.get("metadata", {}).get("is_error"):
                    errors.append(str(entry["value"]))
    return values, errors


def _test_settings(
    lg,
    mode: str,
    scenario: str,
    min_duration_s: float,
    min_query_count: int,
    target_qps: float | None,
):
    settings = lg.TestSettings()
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    settings.min_duration_ms = max(1, round(min_duration_s * 1000))
    settings.min_query_count = min_query_count
    if target_qps is not None:  # Offline performance runs only
        # LoadGen issues ~1.1 x target_qps x min_duration samples in its one query.
        settings.offline_expected_qps = float(target_qps)
        settings.single_stream_expected_latency_ns = max(1, round(1e9 / target_qps))
    return settings


def _publish(tmp_dir: Path, out_dir: Path, result: LoadgenResult) -> None:
    """Write the result into tmp_dir, then move LoadGen's logs and the marker files last
    into out_dir (plain writes suffice: tmp_dir is the staging area)."""
    (tmp_dir / RESULT_JSON).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in tmp_dir.iterdir() if p.name not in MARKER_FILES)
    for name in [*names, *(m for m in MARKER_FILES if (tmp_dir / m).exists())]:
        src = tmp_dir / name
        if name == "mlperf_log_trace.json" and src.stat().st_size == 0:
            continue  # tracing is off; LoadGen still creates the empty file
        os.replace(src, out_dir / name)


def run_loadgen(
    images,
    labels,
    predict_labels: PredictLabels,
    out_dir: str | os.PathLike,
    *,
    mode: str = "accuracy",
    scenario: str = "Offline",
    batch_size: int = 32,
    min_duration_s: float = 2.0,
    min_query_count: int = 64,
    quiet: bool = False,
) -> LoadgenResult:
    """Run MLPerf LoadGen over ``images`` (N x 224 x 224 x 3 uint8) and write its logs.

    ``predict_labels(u8_batch)`` returns one ImageNet label (offset already applied) per
    image. "accuracy" issues every sample once and scores the log against ``labels``;
    "performance" measures samples/s and latencies over a short run (often INVALID by
    MLPerf's rules; the result says so), an Offline one sized by timing one batch.
    predict_labels' errors are re-raised after LoadGen shut down.
    """
    num_samples = _check_run_arguments(images, labels, mode, scenario, batch_size)
    lg = _import_loadgen()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for name in MARKER_FILES:  # a failed run must not leave an older result looking current
        (out_dir / name).unlink(missing_ok=True)
    target_qps = None
    if mode == "performance" and scenario == "Offline":
        target_qps = estimate_samples_per_second(images, predict_labels, batch_size)
        log.info("Offline target set to the measured %.1f samples/s", target_qps)
    settings = _test_settings(lg, mode, scenario, min_duration_s, min_query_count, target_qps)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        # Counts answered samples; the total is known only in accuracy mode.
        total = num_samples if mode == "accuracy" else None
        bar = tqdm(total=total, desc=f"loadgen {scenario} {mode}", unit="img", disable=quiet)
        sut_impl = _CacheSUT(lg, images, predict_labels, batch_size, bar)
        with bar:
            _run_test(lg, sut_impl, num_samples, settings, tmp_dir)
        result = _summarise_run(tmp_dir, out_dir, labels, mode, scenario, num_samples)
        _publish(tmp_dir, out_dir, result)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("LoadGen %s", result.summary_line())
    return result


def _check_run_arguments(images, labels, mode: str, scenario: str, batch_size: int) -> int:
    """Reject bad options and mismatched inputs in one sentence; return the sample count."""
    check_choice("LoadGen mode", mode, LOADGEN_MODES)
    check_choice("LoadGen scenario", scenario, SCENARIOS)
    check_at_least_one(batch_size, "batch size")
    num_samples = len(images)
    if num_samples == 0:
        raise UserError("there are no images to run LoadGen on")
    if len(labels) != num_samples:
        raise UserError(f"{num_samples} images but {len(labels)} labels: they must match")
    return num_samples


def _summarise_run(
    tmp_dir: Path, out_dir: Path, labels, mode: str, scenario: str, num_samples: int
) -> LoadgenResult:
    """Build the result from LoadGen's logs in tmp_dir; accuracy mode also writes accuracy.txt."""
    detail, loadgen_errors = _parse_detail_log(tmp_dir / "mlperf_log_detail.txt")
    result = LoadgenResult(mode, scenario, out_dir, num_samples, loadgen_errors)
    for message in loadgen_errors:
        log.warning("LoadGen reported an error: %s", message)
    if mode == "accuracy":
        _add_accuracy(result, tmp_dir, labels)
    else:
        _add_performance(result, detail, scenario)
    return result


def _add_accuracy(result: LoadgenResult, tmp_dir: Path, labels) -> None:
    """Score the accuracy log against labels; every sample must have been answered."""
    score = score_accuracy_log(tmp_dir / "mlperf_log_accuracy.json", np.asarray(labels))
    if score.total != result.num_samples:
        raise UserError(
            f"LoadGen answered {score.total} of {result.num_samples} samples in accuracy mode"
        )
    result.accuracy_line = score.line()
    result.top1, result.good, result.total = score.top1, score.good, score.total
    (tmp_dir / ACCURACY_TXT).write_text(score.line() + "\n")


def _add_performance(result: LoadgenResult, detail: dict[str, Any], scenario: str) -> None:
    """Throughput, latencies and LoadGen's VALID/INVALID verdict from the detail log."""
    if "result_validity" not in detail:
        raise UserError("LoadGen wrote no performance result: its detail log has no verdict")
    # SingleStream has one sample per query: its throughput is the query rate.
    key = "samples_per_second" if scenario == "Offline" else "qps_with_loadgen_overhead"
    result.samples_per_second = float(detail[f"result_{key}"])
    result.query_count = int(detail.get("result_query_count", 0))
    names = {
        f"result_{pct}_percentile_latency_ns": name for pct, name in LATENCY_PERCENTILES.items()
    }
    names.update({f"result_{name}_latency_ns": name for name in ("min", "max", "mean")})
    result.latency_ns = {
        name: int(detail[key]) for key, name in names.items() if detail.get(key) is not None
    }
    result.valid = detail["result_validity"] == "VALID"
    unmet = {
        "result_min_duration_met": "min duration not met",
        "result_min_queries_met": "min query count not met",
        "early_stopping_met": "early stopping criterion not met",
    }
    result.invalid_reasons = [reason for key, reason in unmet.items() if detail.get(key) is False]
    if hint := str(detail.get("result_invalid_reason", "")).strip():
        result.invalid_reasons.append(hint)
    if not result.valid:
        log.warning("LoadGen called this run INVALID: %s", "; ".join(result.invalid_reasons))


def _run_test(lg, sut_impl: _CacheSUT, num_samples: int, settings, tmp_dir: Path) -> None:
    """Construct the SUT and QSL, run the test with its logs in tmp_dir, destroy both; then
    re-raise what the SUT caught."""
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(tmp_dir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    # Samples held in memory: MLPerf's count, or all N when fewer.
    performance_sample_count = min(num_samples, DEFAULT_PERFORMANCE_SAMPLE_COUNT)
    sut = lg.ConstructSUT(sut_impl.issue_queries, lambda: None)  # nothing held back to flush
    try:
        qsl = lg.ConstructQSL(
            num_samples, performance_sample_count, sut_impl.load_samples, sut_impl.unload_samples
        )
        try:
            # A path that does not exist: a stray audit.config in the working directory
            # would otherwise silently change the test.
            audit_config = tmp_dir / "no-audit.config"
            lg.StartTestWithLogSettings(sut, qsl, settings, log_settings, str(audit_config))
        finally:
            lg.DestroyQSL(qsl)
    finally:
        lg.DestroySUT(sut)
    if sut_impl.error is not None:
        raise sut_impl.error
