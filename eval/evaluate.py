"""Batches from the uint8 cache -> backend logits -> predictions and top-1/top-5.

``evaluate`` is the API the runner calls (it builds the backend from file paths and writes
the results); ``run_evaluation`` is the loop itself over any ``Backend`` and any cache-like
object (``.read(start, stop, out=None)``, ``.labels``, ``len()``), for callers that bring
their own engine.

Crops are only ever read through ``cache.read``, which checks each crop against the digest
written when the cache was built: a damaged cache ends in one sentence, never in a number.
A reader thread copies the next batches out of the cache while the backend works on the
current one, so disk reads overlap inference; ``images_per_second`` counts only the time
spent inside ``Backend.logits``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.errors import UserError
from core.files import atomic_path, exclusive_lock, remove_stale_temporaries
from core.profiles import CROP_SIZE
from eval.backends import Backend, make_backend
from eval.metrics import TOP_K, AccuracyCounter, labels_from_classes, top_k_classes

log = logging.getLogger(__name__)

# Buffers in flight between the reader thread and the loop: one being filled, one queued,
# one in the backend's hands.
_READ_BUFFERS = 3


@dataclass
class EvaluationOutcome:
    """Everything one pass over the cache produced."""

    top5: np.ndarray  # int64 (N, 5): the five best labels, best first
    counter: AccuracyCounter
    inference_seconds: float  # time inside Backend.logits only
    wall_seconds: float
    resumed_from: int = 0  # images restored from a resume journal (not timed this run)

    @property
    def predictions(self) -> np.ndarray:
        """int64 (N,): the predicted label (class index - offset), i.e. the top-5's first."""
        return self.top5[:, 0]

    @property
    def images_per_second(self) -> float:
        timed = self.counter.images - self.resumed_from
        return timed / self.inference_seconds if self.inference_seconds else 0.0


def _read_batches(
    cache, count: int, batch_size: int, buffers: list[np.ndarray], first: int = 0
) -> Iterator[np.ndarray]:
    """Yield consecutive uint8 batches of crops ``first:count``, read into ``buffers``.

    ``cache.read`` copies (and digest-checks) straight into the buffer, e.g. pinned memory.
    A batch must be finished with before the next one is requested: the reader reuses a
    buffer once the two batches after it have been handed out.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for i, start in enumerate(range(first, count, batch_size)):
                stop_at = min(start + batch_size, count)
                buf = buffers[i % len(buffers)][: stop_at - start]
                if not put(cache.read(start, stop_at, out=buf)):
                    return
            put(done)
        except BaseException as err:  # surfaced in the consumer's thread
            put(err)

    thread = threading.Thread(target=reader, name="eval-cache-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def run_evaluation(
    backend: Backend,
    cache,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    quiet: bool = False,
    journal: ResumeJournal | None = None,
) -> EvaluationOutcome:
    """Run ``backend`` over the first ``limit`` (default all) images of ``cache``.

    With a ``journal``, finished images are saved every few seconds and a run killed
    part-way continues from the last save instead of starting over.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    total = len(cache)
    if total == 0:
        raise UserError("the cache holds no images")
    count = total if limit is None else min(limit, total)
    if limit is not None and limit > total:
        log.info("--limit %d is more than the %d cached images: evaluating all", limit, total)
    labels = np.asarray(cache.labels[:count], dtype=np.int64)

    top5 = np.empty((count, TOP_K), dtype=np.int64)
    counter = AccuracyCounter()
    first = 0
    if journal is not None:
        first = journal.restore(top5, count)
        if first:
            counter.update(top5[:first], labels[:first])
            log.info("resuming %s: %d of %d images already evaluated", journal.path, first, count)
    buffers = [backend.allocate_batch(min(batch_size, count)) for _ in range(_READ_BUFFERS)]
    inference_seconds = 0.0
    wall_start = time.perf_counter()
    bar = tqdm(
        total=count,
        unit="img",
        desc=f"{backend.profile.name} [{backend.name}]",
        disable=quiet,
        dynamic_ncols=True,
    )
    bar.update(first)
    with bar:
        start = first
        for batch in _read_batches(cache, count, batch_size, buffers, first):
            t0 = time.perf_counter()
            logits = backend.logits(batch)
            inference_seconds += time.perf_counter() - t0
            stop = start + len(batch)
            best = labels_from_classes(top_k_classes(logits, TOP_K), backend.label_offset)
            top5[start:stop] = best
            counter.update(best, labels[start:stop])
            bar.update(len(batch))
            bar.set_postfix(top1=f"{counter.top1:.2f}%", refresh=False)
            start = stop
            if journal is not None:
                journal.maybe_save(top5, stop)
    return EvaluationOutcome(
        top5=top5,
        counter=counter,
        inference_seconds=inference_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        resumed_from=first,
    )


class ResumeJournal:
    """The top-5 labels of the images finished so far, saved atomically every few seconds.

    ``key`` names what was being evaluated (backend, weights or checkpoint digest, cache
    fingerprint, image count): a journal from any other run is ignored, never reused.
    """

    def __init__(self, path: Path, key: str, every_seconds: float = 20.0):
        self.path, self.key, self.every_seconds = Path(path), key, every_seconds
        self._last_save = time.monotonic()

    def restore(self, top5: np.ndarray, count: int) -> int:
        """Fill ``top5[:done]`` from the journal and return ``done`` (0 when none fits)."""
        try:
            with np.load(self.path) as saved:
                if str(saved["key"]) != self.key or saved["top5"].shape != top5.shape:
                    return 0
                done = min(int(saved["done"]), count)
                top5[:done] = saved["top5"][:done]
                return done
        except (OSError, ValueError, KeyError):
            return 0

    def maybe_save(self, top5: np.ndarray, done: int) -> None:
        if time.monotonic() - self._last_save >= self.every_seconds:
            self.save(top5, done)

    def save(self, top5: np.ndarray, done: int) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez(f, key=np.array(self.key), done=np.array(done), top5=top5)
        self._last_save = time.monotonic()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _journal_key(backend: Backend, cache, count: int) -> str:
    identity = {
        "model": backend.profile.name,
        "backend": backend.name,
        "engine": backend.engine,
        "source": {k: v for k, v in backend.describe().items() if k.endswith("sha256")},
        "cache": getattr(cache, "fingerprint", None),
        "count": count,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def evaluate(
    model: str,
    cache_dir,
    *,
    weights=None,
    backend: str = "torch",
    checkpoint=None,
    batch_size: int = 32,
    device: str = "cpu",
    limit: int | None = None,
    out_dir=None,
    quiet: bool = False,
    engine: str = "auto",
    loadgen: str | None = None,
    scenario: str = "Offline",
    wait: bool = False,
) -> dict:
    """Evaluate ``model`` over the preprocessed cache; return (and write) the results dict.

    ``backend="torch"`` needs ``weights`` (a converted .pth); ``backend="tf"`` needs
    ``checkpoint`` (the frozen graph). With ``out_dir``, writes results.json,
    predictions.npy and top5.npy there atomically, holding the folder's lock (one writer
    at a time; ``wait`` waits for another holder instead of refusing).

    ``engine`` (torch only): "eager", "fast" (frozen/compiled, checked against eager on the
    first cached crops) or "auto" (fast only when the run is long enough to pay for it).

    ``loadgen="accuracy"|"performance"`` adds an MLPerf LoadGen run with the same backend
    (a second pass over the images; its logs go to ``out_dir/loadgen``) and records its
    result under ``results["loadgen"]``.
    """
    from core.profiles import get_profile
    from preprocess import load_cache

    get_profile(model)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if loadgen is not None and out_dir is None:
        raise UserError("a LoadGen run needs an output directory for its logs")
    options = dict(
        weights=weights,
        backend=backend,
        checkpoint=checkpoint,
        batch_size=batch_size,
        device=device,
        limit=limit,
        quiet=quiet,
        engine=engine,
        loadgen=loadgen,
        scenario=scenario,
    )
    cache = load_cache(Path(cache_dir), model)  # cheap checks first: no folder for a typo
    if out_dir is None:
        return _evaluate_into(None, model, cache, cache_dir, **options)
    out_dir = Path(out_dir)
    check_output_dir(out_dir)  # before the long work: a read-only --out is one sentence now
    with exclusive_lock(out_dir, "output dir", wait=wait):
        remove_stale_outputs(out_dir)
        return _evaluate_into(out_dir, model, cache, cache_dir, **options)


def _evaluate_into(out_dir: Path | None, model: str, cache, cache_dir, **options) -> dict:
    """The evaluation itself; the caller holds ``out_dir``'s lock when there is one."""
    from eval.report import build_results, write_outputs

    limit, batch_size, quiet = options["limit"], options["batch_size"], options["quiet"]
    count = len(cache) if limit is None else min(limit, len(cache))
    with make_backend(
        model,
        options["backend"],
        weights=options["weights"],
        checkpoint=options["checkpoint"],
        device=options["device"],
        engine=options["engine"],
        batch_size=batch_size,
        num_images=count,
        verify_images=cache.read(0, min(count, 8)),
    ) as runner:
        journal = None
        if out_dir is not None:
            journal = ResumeJournal(out_dir / "resume.npz", _journal_key(runner, cache, count))
        outcome = run_evaluation(
            runner, cache, batch_size=batch_size, limit=limit, quiet=quiet, journal=journal
        )
        results = build_results(
            runner, outcome, cache=cache, cache_dir=cache_dir, batch_size=batch_size, limit=limit
        )
        if options["loadgen"] is not None:
            results["loadgen"] = run_loadgen_pass(
                runner,
                cache,
                outcome.counter.images,
                out_dir / "loadgen",
                mode=options["loadgen"],
                scenario=options["scenario"],
                batch_size=batch_size,
                quiet=quiet,
            )
    if out_dir is not None:
        write_outputs(out_dir, results, outcome)
        journal.clear()
    return results


def check_output_dir(out_dir: Path, option: str = "--out") -> None:
    """UserError unless ``out_dir`` exists (or can be made) and a file can be written in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise UserError(
            f"cannot write to {out_dir} ({err.strerror or err}): choose a writable {option}"
        ) from None


def remove_stale_outputs(out_dir: Path) -> None:
    """Delete the temporary files and LoadGen log folders a killed run left in ``out_dir``.

    Call only while holding ``out_dir``'s lock: then no live run owns them.
    """
    for stale in out_dir.glob(".*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    if removed := remove_stale_temporaries(out_dir):
        log.info("removed %d temporary file(s) a killed run left in %s", removed, out_dir)


class CacheCrops:
    """The first ``count`` crops of a cache as a read-only array-like for LoadGen.

    Indexing (an int, a slice or an array of indices) reads through ``cache.read``, so every
    crop LoadGen's queries see is checked against its build-time digest.
    """

    def __init__(self, cache, count: int):
        self.cache, self.count = cache, count
        self.shape = (count, CROP_SIZE, CROP_SIZE, 3)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.count)
            if step == 1:
                return self.cache.read(start, max(start, stop))
            key = np.arange(start, stop, step)
        indices = np.asarray(key, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.count):
            raise IndexError(f"crop index out of range 0..{self.count - 1}")
        out = np.empty((len(indices), *self.shape[1:]), dtype=np.uint8)
        for first, last in _consecutive_runs(indices):
            start = int(indices[first])
            self.cache.read(start, start + last - first, out=out[first:last])
        return out


def _consecutive_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, last), ...]`` positions of runs where each index is the previous + 1."""
    if not len(indices):
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    edges = [0, *breaks.tolist(), len(indices)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def run_loadgen_pass(
    backend: Backend,
    cache,
    count: int,
    out_dir: Path,
    *,
    mode: str,
    scenario: str,
    batch_size: int,
    quiet: bool,
) -> dict:
    """Answer MLPerf LoadGen's queries over the first ``count`` cached images with ``backend``.

    The SUT replies with the predicted label (argmax - the backend's label offset), as
    MLPerf's reference does; the accuracy log is then scored the way accuracy-imagenet.py
    scores it.
    """
    from eval.loadgen import run_loadgen

    def predict_labels(u8_batch: np.ndarray) -> np.ndarray:
        logits = backend.logits(u8_batch)
        return labels_from_classes(top_k_classes(logits, 1), backend.label_offset)[:, 0]

    result = run_loadgen(
        CacheCrops(cache, count),
        np.asarray(cache.labels[:count], dtype=np.int64),
        predict_labels,
        out_dir,
        mode=mode,
        scenario=scenario,
        batch_size=batch_size,
        quiet=quiet,
    )
    if result.accuracy_line:
        log.info("LoadGen %s", result.accuracy_line)
    return result.to_json()
