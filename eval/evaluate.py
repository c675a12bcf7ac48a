"""Batches from the uint8 cache -> backend -> top-5 labels, top-1/top-5 and results.

``evaluate`` builds the backend from file paths and writes the results; ``run_evaluation``
is the loop over any ``Backend`` and any cache-like object (``.read(start, stop,
out=None)``, ``.labels``, ``len()``). Crops are only read through ``cache.read``, which
checks each against its build-time digest: a damaged cache ends in one sentence, never in
a number. Reader threads fill the next batches while the backend works on the current one.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.cli import check_at_least_one
from core.errors import UserError
from core.files import (
    check_output_dir,
    exclusive_lock,
    remove_stale_temporaries,
    temporary_target,
)
from core.profiles import ModelProfile, get_profile
from eval import distributed
from eval.backends import Backend, check_model_inputs, make_backend, resolve_torch_device
from eval.journal import ResumeJournal, journal_key, loaded_inputs
from eval.loadgen.cache_pass import run_loadgen_pass
from eval.method.prepare import PreparedMethod, prepare_method
from eval.metrics import TOP_K, AccuracyCounter
from eval.options import VERIFY_IMAGES, EvalSettings
from eval.results import EvalResult, build_result, write_outputs

log = logging.getLogger(__name__)

# Batch buffers beyond one per reader thread: one the backend is working on, one just
# filled and waiting, so neither the readers nor the backend wait for each other.
SPARE_BUFFERS = 2


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
        """int64 (N,): the predicted label, the top-5's first."""
        return self.top5[:, 0]

    @property
    def images_per_second(self) -> float:
        timed = self.counter.images - self.resumed_from
        return timed / self.inference_seconds if self.inference_seconds else 0.0


def _read_batches(
    cache, count: int, batch_size: int, buffers: list[np.ndarray], first: int, readers: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, batch)`` for consecutive uint8 batches of crops ``first:count``.

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
                ahead.append((start, pool.submit(cache.read, start, stop, out=buf)))
                return

        for _ in range(len(buffers) - 1):
            launch()
        try:
            while ahead:
                start, future = ahead.popleft()
                yield start, future.result()
                launch()  # into the buffer of the batch just finished with
        finally:
            for _, future in ahead:
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
    """Run ``backend`` over the first ``limit`` (default all) images of ``cache``; a
    ``journal`` saves finished images every few seconds, and a killed run continues there."""
    count = _images_to_evaluate(cache, batch_size, limit)
    labels = np.asarray(cache.labels[:count], dtype=np.int64)
    top5 = np.empty((count, TOP_K), dtype=np.int64)
    counter = AccuracyCounter()
    first = journal.restore(top5, count) if journal is not None else 0
    if first:  # the journal's last save: those images are not run again
        counter.update(top5[:first], labels[:first])
        log.info("resuming %s: %d of %d images already evaluated", journal.path, first, count)
    readers = max(1, backend.reader_threads)
    buffers = [
        backend.allocate_batch(min(batch_size, count)) for _ in range(readers + SPARE_BUFFERS)
    ]
    wall_start = time.perf_counter()
    desc = f"{backend.profile.name} [{backend.name}]"
    with tqdm(
        total=count, initial=first, unit="img", desc=desc, disable=quiet, dynamic_ncols=True
    ) as bar:
        loop = _InferenceLoop(backend, top5, labels, counter, bar, journal)
        for start, batch in _read_batches(cache, count, batch_size, buffers, first, readers):
            loop.submit(start, batch)
        loop.fetch()
    wall_seconds = time.perf_counter() - wall_start
    return EvaluationOutcome(
        top5, counter, loop.inference_seconds, wall_seconds, resumed_from=first
    )


def _images_to_evaluate(cache, batch_size: int, limit: int | None) -> int:
    """Check the options against the cache; return how many images to evaluate."""
    check_at_least_one(batch_size, "--batch-size")
    check_at_least_one(limit, "--limit")
    total = len(cache)
    if total == 0:
        raise UserError("the cache holds no images")
    if limit is not None and limit > total:
        log.info("--limit %d is more than the %d cached images: evaluating all", limit, total)
    return total if limit is None else min(limit, total)


@dataclass
class _InferenceLoop:
    """Submits batches and fetches their top-5 every ``collect_every`` batches, timing
    only ``Backend.submit`` and ``Backend.collect`` (``inference_seconds``), never reads."""

    backend: Backend
    top5: np.ndarray
    labels: np.ndarray
    counter: AccuracyCounter
    bar: tqdm
    journal: ResumeJournal | None
    pending: list = field(default_factory=list)  # (start, stop, handle) not yet fetched
    inference_seconds: float = 0.0

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


@dataclass(frozen=True)
class _Job:
    """One evaluation's checked inputs; ``settings`` already hold this rank's device."""

    profile: ModelProfile
    cache: Any
    cache_dir: str | os.PathLike
    settings: EvalSettings
    ctx: distributed.DistContext
    count: int  # images to evaluate over all ranks: the cache's, or the first ``limit``
    method: PreparedMethod | None = None  # a modified model's (eval.method)


def evaluate(
    model_name: str,
    cache_dir: str | os.PathLike,
    settings: EvalSettings | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    **changes: Any,
) -> EvalResult | None:
    """Evaluate ``model_name`` over the preprocessed cache; return (and write) the result.

    Keyword arguments change single ``settings``, e.g. ``evaluate("resnet50", "cache",
    weights="model.pth", batch_size=64)``. With ``out_dir``, writes results.json,
    predictions.npy and top5.npy there atomically, holding the folder's lock (LoadGen logs
    go to ``out_dir/loadgen``). Under torchrun every rank evaluates its shard and rank 0
    alone writes and returns the result (other ranks return None; no resume journal).
    """
    settings = dataclasses.replace(settings or EvalSettings(), **changes).resolved()
    profile = get_profile(model_name)
    settings.check()  # settings that cannot work: one sentence, before any work
    check_at_least_one(settings.batch_size, "--batch-size")
    if settings.loadgen is not None and out_dir is None:
        raise UserError("a LoadGen run needs an output directory for its logs")
    ctx = distributed.init_from_environment(settings.device)
    try:
        if ctx.distributed and settings.loadgen is not None:
            raise UserError("a LoadGen run is one process: run it without torchrun")
        device, quiet = distributed.device_for_rank(settings.device, ctx), not ctx.is_main
        settings = dataclasses.replace(settings, device=device, quiet=settings.quiet or quiet)
        reports = out_dir is not None and ctx.is_main
        job = _checked_job(profile, cache_dir, settings, ctx, Path(out_dir) if reports else None)
        if not reports:
            return _evaluate_into(None, job)
        out_dir = Path(out_dir)
        check_output_dir(out_dir)  # before the long work: a read-only --out is one sentence
        with exclusive_lock(out_dir, "output dir", wait=settings.wait):
            remove_stale_run_files(out_dir)
            return _evaluate_into(out_dir, job)
    finally:
        distributed.shutdown(ctx)


def _checked_job(profile, cache_dir, settings: EvalSettings, ctx, out_dir: Path | None) -> _Job:
    """The evaluation's inputs, each checked before any output exists: a typo in a path,
    a missing GPU or an unusable method leaves no output folder behind."""
    from preprocess import load_cache

    cache = load_cache(Path(cache_dir), profile)
    count = _images_to_evaluate(cache, settings.batch_size, settings.limit)
    check_model_inputs(settings)
    # A method's file, calibration images and fp32 reference (rank 0 judges).
    method = prepare_method(profile, cache, cache_dir, count, settings, out_dir, ctx.is_main)
    if settings.backend == "torch":
        resolve_torch_device(settings.device)
    return _Job(profile, cache, cache_dir, settings, ctx, count, method)


def _evaluate_into(out_dir: Path | None, job: _Job) -> EvalResult | None:
    """The evaluation itself; the caller holds ``out_dir``'s lock when there is one."""
    settings, cache = job.settings, job.cache
    first, last = distributed.shard_bounds(job.count, job.ctx.rank, job.ctx.world_size)
    verify_images = cache.read(0, min(job.count, VERIFY_IMAGES))
    with make_backend(
        job.profile,
        settings,
        num_images=last - first,
        verify_images=verify_images,
        modify=None if job.method is None else job.method.modify,
    ) as backend:
        outcome = _predict(backend, job, out_dir, distributed.CacheShard(cache, first, last))
        if outcome is None:  # not rank 0: rank 0 reports
            return None
        result = build_result(backend, outcome, cache, job.cache_dir, settings, job.ctx.world_size)
        if settings.loadgen is not None:
            loadgen_dir = out_dir / "loadgen"
            result.loadgen = run_loadgen_pass(backend, cache, result.images, loadgen_dir, settings)
        if job.method is not None:  # its verdict, flips.csv, layers.json: before results.json
            job.method.judge(result, backend, out_dir)
    if out_dir is not None:
        write_outputs(out_dir, result)
        (out_dir / "resume.npz").unlink(missing_ok=True)
    return result


def _predict(
    backend: Backend, job: _Job, out_dir: Path | None, shard: distributed.CacheShard
) -> EvaluationOutcome | None:
    """Every image's top-5: ``shard`` alone (with a resume journal in ``out_dir``), or under
    torchrun every rank's, gathered on rank 0 (None on the other ranks)."""
    settings = job.settings
    journal = None
    if out_dir is not None and not job.ctx.distributed:
        method = None if job.method is None else job.method.digest
        key = journal_key(backend, job.cache, job.count, method)
        journal = ResumeJournal(out_dir / "resume.npz", key)
    # A rank may get an empty shard (fewer images than ranks): an empty outcome.
    outcome = EvaluationOutcome(
        np.empty((0, TOP_K), np.int64), AccuracyCounter(), inference_seconds=0.0, wall_seconds=0.0
    )
    if len(shard):
        outcome = run_evaluation(
            backend, shard, batch_size=settings.batch_size, quiet=settings.quiet, journal=journal
        )
    if job.ctx.distributed:
        inputs = loaded_inputs(backend, job.cache)
        seconds = {k: getattr(outcome, k) for k in ("inference_seconds", "wall_seconds")}
        gathered = distributed.gather_predictions(outcome.top5, seconds, inputs, job.count, job.ctx)
        if gathered is None:  # not rank 0
            return None
        counter = AccuracyCounter()  # scored over every rank's images
        counter.update(gathered["top5"], np.asarray(job.cache.labels[: job.count], np.int64))
        return dataclasses.replace(outcome, **gathered, counter=counter, resumed_from=0)
    return outcome


def remove_stale_run_files(out_dir: Path) -> None:
    """Delete the temporary files and LoadGen log folders a killed run left in ``out_dir``;
    call only while holding its lock, when no live run owns them."""
    for stale in out_dir.glob(".*.tmp"):
        if stale.is_dir() and temporary_target(stale.name) is not None:
            shutil.rmtree(stale, ignore_errors=True)
    if removed := remove_stale_temporaries(out_dir):
        log.info("removed %d temporary file(s) a killed run left in %s", removed, out_dir)
