"""Batches from the uint8 cache -> backend logits -> predictions and top-1/top-5.

``evaluate`` is the API the runner calls (it builds the backend from file paths and writes
the results); ``run_evaluation`` is the loop itself over any ``Backend`` and any cache-like
object (``.read(start, stop, out=None)``, ``.labels``, ``len()``), for callers that bring
their own engine.

Crops are only ever read through ``cache.read``, which checks each crop against the digest
written when the cache was built: a damaged cache ends in one sentence, never in a number.
A reader thread copies the next batches out of the cache while the backend works on the
current one, so disk reads overlap inference; ``images_per_second`` counts only the time
spent inside the backend (``Backend.submit`` and ``Backend.collect``): steady state,
since engines warm up while they are built and that cost is ``setup_seconds``. A backend
may keep results on its device and fetch them once per ``collect_every`` batches.

Under torchrun (``eval.distributed``) each rank evaluates its contiguous shard and rank 0
gathers the top-5 labels and writes the one results.json.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from core.errors import UserError
from core.files import atomic_path, exclusive_lock, remove_stale_temporaries
from core.profiles import CROP_SIZE, ModelProfile, get_profile
from eval import distributed
from eval.backends import Backend, check_model_inputs, make_backend, resolve_torch_device
from eval.metrics import TOP_K, AccuracyCounter, labels_from_classes, top_k_classes
from eval.options import EvalSettings
from eval.report import EvalResult, Fp32Agreement, build_result, write_outputs

if TYPE_CHECKING:
    from eval.loadgen import LoadgenResult

log = logging.getLogger(__name__)


@dataclass
class EvaluationOutcome:
    """Everything one pass over the cache produced."""

    top5: np.ndarray  # int64 (N, 5): the five best labels, best first
    counter: AccuracyCounter
    inference_seconds: float  # time inside Backend.submit and Backend.collect only
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
    cache, count: int, batch_size: int, buffers: list[np.ndarray], first: int = 0, readers: int = 1
) -> Iterator[np.ndarray]:
    """Yield consecutive uint8 batches of crops ``first:count``, read into ``buffers``.

    ``cache.read`` copies (and digest-checks: sha256, which releases the GIL) straight into
    the buffer, e.g. pinned memory, on ``readers`` threads; batch i always uses
    ``buffers[i % len(buffers)]`` and at most ``len(buffers) - 1`` reads run ahead. A batch
    must be finished with before the next one is requested: its buffer is refilled then.
    """
    starts = iter(enumerate(range(first, count, batch_size)))
    ahead: collections.deque = collections.deque()
    with ThreadPoolExecutor(readers, thread_name_prefix="eval-cache-reader") as pool:

        def launch() -> None:
            for i, start in starts:
                stop = min(start + batch_size, count)
                buf = buffers[i % len(buffers)][: stop - start]
                ahead.append(pool.submit(cache.read, start, stop, out=buf))
                return

        for _ in range(len(buffers) - 1):
            launch()
        try:
            while ahead:
                batch = ahead.popleft().result()
                yield batch
                launch()  # into the buffer of the batch just finished with
        finally:
            for future in ahead:
                future.cancel()


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
    count = _images_to_evaluate(cache, batch_size, limit)
    labels = np.asarray(cache.labels[:count], dtype=np.int64)

    top5 = np.empty((count, TOP_K), dtype=np.int64)
    counter = AccuracyCounter()
    first = _restore_from_journal(journal, top5, labels, counter, count)
    readers = max(1, backend.reader_threads)
    buffers = [backend.allocate_batch(min(batch_size, count)) for _ in range(readers + 2)]
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
        loop = _InferenceLoop(backend, top5, labels, counter, bar, journal)
        start = first
        for batch in _read_batches(cache, count, batch_size, buffers, first, readers):
            loop.submit(start, batch)
            start += len(batch)
        loop.fetch()
    return EvaluationOutcome(
        top5=top5,
        counter=counter,
        inference_seconds=loop.inference_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        resumed_from=first,
    )


def _images_to_evaluate(cache, batch_size: int, limit: int | None) -> int:
    """Check the options against the cache; return how many images to evaluate."""
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
    return count


def _restore_from_journal(
    journal: ResumeJournal | None,
    top5: np.ndarray,
    labels: np.ndarray,
    counter: AccuracyCounter,
    count: int,
) -> int:
    """Fill top5 and counter from the journal's last save; return the first image to run."""
    if journal is None:
        return 0
    first = journal.restore(top5, count)
    if first:
        counter.update(top5[:first], labels[:first])
        log.info("resuming %s: %d of %d images already evaluated", journal.path, first, count)
    return first


class _InferenceLoop:
    """Submits batches to the backend and fetches their top-5 every ``collect_every`` batches.

    ``inference_seconds`` adds up only the time spent in ``Backend.submit`` and
    ``Backend.collect``, never the cache reads.
    """

    def __init__(self, backend: Backend, top5, labels, counter, bar: tqdm, journal) -> None:
        self.backend = backend
        self.top5 = top5
        self.labels = labels
        self.counter = counter
        self.bar = bar
        self.journal = journal
        self.pending: list[tuple[int, int, object]] = []  # (start, stop, handle) not yet fetched
        self.inference_seconds = 0.0

    def submit(self, start: int, batch: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.pending.append((start, start + len(batch), self.backend.submit(batch)))
        self.inference_seconds += time.perf_counter() - t0
        if len(self.pending) >= self.backend.collect_every:
            self.fetch()

    def fetch(self) -> None:
        """Collect every pending batch, score it, and save the journal if it is due."""
        if not self.pending:
            return
        pending = self.pending
        t0 = time.perf_counter()
        fetched = self.backend.collect([handle for _, _, handle in pending])
        self.inference_seconds += time.perf_counter() - t0
        for (start, stop, _), best in zip(pending, fetched, strict=True):
            self.top5[start:stop] = best
            self.counter.update(best, self.labels[start:stop])
        self.bar.update(pending[-1][1] - pending[0][0])
        self.bar.set_postfix(top1=f"{self.counter.top1:.2f}%", refresh=False)
        if self.journal is not None:
            self.journal.maybe_save(self.top5, pending[-1][1])
        pending.clear()


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
        "precision": getattr(backend, "precision", "fp32"),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class _Job:
    """One evaluation's checked inputs; ``settings`` already hold this rank's device."""

    profile: ModelProfile
    cache: Any
    cache_dir: str | os.PathLike
    settings: EvalSettings
    ctx: distributed.DistContext

    @property
    def count(self) -> int:
        """Images to evaluate, over all ranks: the cache's, or the first ``limit``."""
        limit = self.settings.limit
        return len(self.cache) if limit is None else min(limit, len(self.cache))


def evaluate(
    model_name: str,
    cache_dir: str | os.PathLike,
    settings: EvalSettings | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    **changes: Any,
) -> EvalResult | None:
    """Evaluate ``model_name`` over the preprocessed cache; return (and write) the result.

    ``settings`` say how (``EvalSettings``: backend and model file, device, engine,
    precision, batch size, limit, LoadGen); keyword arguments change single settings, e.g.
    ``evaluate("resnet50", "cache", weights="model.pth", batch_size=64)``. With ``out_dir``,
    writes results.json (``result.to_json()``), predictions.npy and top5.npy there
    atomically, holding the folder's lock (``wait`` waits for another holder).

    A non-fp32 run reports the share of its predictions equal to an fp32 run of the same
    cache and weights in a sibling folder of ``out_dir`` (``find_fp32_reference``). A LoadGen
    run is a second pass with the same backend; its logs go to ``out_dir/loadgen``.

    Under torchrun (WORLD_SIZE > 1) every rank evaluates its shard; rank 0 alone holds
    ``out_dir``'s lock, writes the outputs and returns the result; other ranks return None.
    A distributed run keeps no resume journal (each rank's share is the short part).
    """
    from preprocess import load_cache

    settings = dataclasses.replace(settings or EvalSettings(), **changes)
    profile = get_profile(model_name)
    _check_settings(settings, out_dir)
    ctx = distributed.init_from_environment(settings.device)
    try:
        if ctx.distributed and settings.loadgen is not None:
            raise UserError("a LoadGen run is one process: run it without torchrun")
        device, quiet = distributed.device_for_rank(settings.device, ctx), not ctx.is_main
        settings = dataclasses.replace(settings, device=device, quiet=settings.quiet or quiet)
        # Cheap checks first: a typo in a path leaves no output folder behind.
        job = _Job(profile, load_cache(Path(cache_dir), profile), cache_dir, settings, ctx)
        check_model_inputs(settings)
        if settings.backend == "torch":
            resolve_torch_device(settings.device)  # a missing GPU, before any output
        if out_dir is None or not ctx.is_main:
            return _evaluate_into(None, job)
        out_dir = Path(out_dir)
        check_output_dir(out_dir)  # before the long work: a read-only --out is one sentence
        with exclusive_lock(out_dir, "output dir", wait=settings.wait):
            remove_stale_outputs(out_dir)
            return _evaluate_into(out_dir, job)
    finally:
        distributed.shutdown(ctx)


def _check_settings(settings: EvalSettings, out_dir) -> None:
    """One sentence for settings that cannot work, before any work."""
    from eval.engines import check_precision  # imports torch: not at module level

    if settings.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if settings.loadgen is not None and out_dir is None:
        raise UserError("a LoadGen run needs an output directory for its logs")
    device = settings.device
    try:  # an unknown precision, or tf32/bf16 off CUDA
        check_precision(settings.precision, "cuda" if device.startswith("cuda") else device)
    except ValueError as err:
        raise UserError(str(err)) from None


class CacheShard:
    """Images ``start:stop`` of a cache, indexed from 0 (one rank's share)."""

    def __init__(self, cache, start: int, stop: int):
        self.cache, self.start, self.stop = cache, start, stop
        self.labels = cache.labels[start:stop]
        self.fingerprint = getattr(cache, "fingerprint", None)

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.cache.read(self.start + start, self.start + stop, out=out)


def _evaluate_into(out_dir: Path | None, job: _Job) -> EvalResult | None:
    """The evaluation itself; the caller holds ``out_dir``'s lock when there is one."""
    settings, cache = job.settings, job.cache
    first, last = distributed.shard_bounds(job.count, job.ctx.rank, job.ctx.world_size)
    verify_images = cache.read(0, min(job.count, 8))
    with make_backend(
        job.profile, settings, num_images=last - first, verify_images=verify_images
    ) as backend:
        outcome = _predict(backend, job, out_dir, CacheShard(cache, first, last))
        if outcome is None:  # not rank 0: rank 0 reports
            return None
        result = build_result(backend, outcome, cache, job.cache_dir, settings, job.ctx.world_size)
        if settings.loadgen is not None:
            loadgen_dir = out_dir / "loadgen"
            result.loadgen = run_loadgen_pass(backend, cache, result.images, loadgen_dir, settings)
    if out_dir is not None:
        if settings.precision != "fp32":
            result.fp32_reference = fp32_agreement(out_dir, result.to_json(), result.predictions)
        write_outputs(out_dir, result)
        (out_dir / "resume.npz").unlink(missing_ok=True)
    return result


def _predict(
    backend: Backend, job: _Job, out_dir: Path | None, shard: CacheShard
) -> EvaluationOutcome | None:
    """Every image's top-5: from this process alone, or gathered from every rank on rank 0.

    None on the other ranks. One process keeps a resume journal in ``out_dir``.
    """
    settings = job.settings
    if job.ctx.distributed:  # an empty shard (fewer images than ranks) has an empty outcome
        outcome = EvaluationOutcome(np.empty((0, TOP_K), np.int64), AccuracyCounter(), 0.0, 0.0)
        if len(shard):
            outcome = run_evaluation(
                backend, shard, batch_size=settings.batch_size, quiet=settings.quiet
            )
        return _gather_outcome(outcome, job.cache, job.count, job.ctx)
    journal = None
    if out_dir is not None:
        journal = ResumeJournal(out_dir / "resume.npz", _journal_key(backend, job.cache, job.count))
    return run_evaluation(
        backend,
        job.cache,
        batch_size=settings.batch_size,
        limit=settings.limit,
        quiet=settings.quiet,
        journal=journal,
    )


def _gather_outcome(outcome: EvaluationOutcome, cache, count: int, ctx):
    """Rank 0: every rank's top-5 in rank order, scored over all ``count`` images."""
    mine = (outcome.top5, outcome.inference_seconds, outcome.wall_seconds)
    gathered = distributed.gather_to_main(mine, ctx)
    if gathered is None:
        return None
    top5 = distributed.join_shards([shard for shard, _, _ in gathered], count)
    counter = AccuracyCounter()
    counter.update(top5, np.asarray(cache.labels[:count], dtype=np.int64))
    # The ranks run side by side: the slowest one is the run's time.
    return EvaluationOutcome(
        top5=top5,
        counter=counter,
        inference_seconds=max(seconds for _, seconds, _ in gathered),
        wall_seconds=max(wall for _, _, wall in gathered),
    )


def find_fp32_reference(out_dir: Path, results: dict) -> Path | None:
    """A sibling folder of ``out_dir`` holding an fp32 run that this run can be checked on.

    It must have results.json and predictions.npy for the same model, cache fingerprint
    and weights digest, precision fp32 (a results.json without a precision field counts as
    fp32: only backends that run fp32 alone leave it out) and at least as many images; the
    newest such folder wins.
    """
    candidates = []
    for path in Path(out_dir).resolve().parent.glob("*/results.json"):
        if path.parent == Path(out_dir).resolve():
            continue
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        same = all(
            other.get(key) == results.get(key)
            for key in ("model", "cache_fingerprint", "weights_sha256")
        )
        if (
            same
            and other.get("precision", "fp32") == "fp32"
            and other.get("images", 0) >= results["images"]
            and (path.parent / "predictions.npy").is_file()
        ):
            candidates.append((path.stat().st_mtime, path.parent))
    return max(candidates)[1] if candidates else None


def fp32_agreement(out_dir: Path, results: dict, predictions: np.ndarray) -> Fp32Agreement | None:
    """Where the fp32 reference run is, its top-1, and the share of equal predictions."""
    reference = find_fp32_reference(out_dir, results)
    if reference is None:
        log.info("no fp32 run of the same cache and weights beside %s to compare with", out_dir)
        return None
    theirs = np.load(reference / "predictions.npy")[: len(predictions)]
    other = json.loads((reference / "results.json").read_text())
    same = int((theirs == predictions).sum())
    return Fp32Agreement(
        dir=reference,
        top1=other.get("top1") if other.get("images") == len(predictions) else None,
        equal_predictions=same,
        equal_share=round(same / len(predictions), 6) if len(predictions) else None,
    )


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
    backend: Backend, cache, count: int, out_dir: Path, settings: EvalSettings
) -> LoadgenResult:
    """Answer MLPerf LoadGen's queries over the first ``count`` cached images with ``backend``.

    ``settings.loadgen`` is the mode. The SUT replies with the predicted label (argmax - the
    backend's label offset), as MLPerf's reference does; the accuracy log is then scored the
    way accuracy-imagenet.py scores it.
    """
    from eval.loadgen import run_loadgen

    def predict_labels(u8_batch: np.ndarray) -> np.ndarray:
        logits = backend.logits(u8_batch)
        return labels_from_classes(top_k_classes(logits, 1), backend.label_offset)[:, 0]

    return run_loadgen(
        CacheCrops(cache, count),
        np.asarray(cache.labels[:count], dtype=np.int64),
        predict_labels,
        out_dir,
        mode=settings.loadgen,
        scenario=settings.scenario,
        batch_size=settings.batch_size,
        quiet=settings.quiet,
    )
