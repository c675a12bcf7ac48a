"""Build a cache: decode and crop in worker threads, straight into a memory-mapped file.

Resuming: every finished range of images is appended to ``journal.txt`` after its crops
are in the shared file mapping, so a ``kill -9`` loses nothing that the journal claims.
A rerun with the same build config skips the journaled ranges; a different config (model,
recipe, OpenCV, listing, limit, data dir) starts over and says so.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from core.errors import UserError
from core.files import atomic_path, save_npy_atomic, write_text_atomic
from core.profiles import get_profile
from preprocess.cache import (
    CROP_SHAPE,
    FILES_NAME,
    FINAL_NAMES,
    FORMAT_VERSION,
    IMAGES_NAME,
    JOURNAL_NAME,
    LABELS_NAME,
    PARTIAL_IMAGES_NAME,
    cache_fingerprint,
    config_key,
    read_manifest,
    write_manifest,
)
from preprocess.dataset import Listing, list_dataset
from preprocess.recipes import decode, recipe_parameters
from preprocess.workers import RangeProcessor, run_ranges

log = logging.getLogger(__name__)

MAX_CHUNK = 32  # images per task: small enough for a fine-grained journal and progress bar


@dataclass(frozen=True)
class BuildSummary:
    model: str
    cache_dir: Path
    images: int  # images in the finished cache
    processed: int  # images decoded by this run (0 when the cache was already up to date)
    skipped: tuple[str, ...]  # unreadable files left out (--skip-bad)
    seconds: float
    already_complete: bool
    fingerprint: str

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.already_complete:
            return (
                f"preprocess {self.model}: {self.images} images already cached in "
                f"{self.cache_dir}, nothing to do"
            )
        skipped = f", skipped {len(self.skipped)} unreadable" if self.skipped else ""
        return (
            f"preprocess {self.model}: {self.images} images cached in {self.cache_dir} "
            f"({self.processed} processed in {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} img/s{skipped})"
        )


# ---------------------------------------------------------------- journal


def _read_journal(cache_dir: Path, key: str, count: int) -> list[tuple[int, int]] | None:
    """Finished ranges of a build with this key, or None when there is nothing to resume."""
    journal = cache_dir / JOURNAL_NAME
    partial = cache_dir / PARTIAL_IMAGES_NAME
    try:
        lines = journal.read_text().split("\n")
        header = json.loads(lines[0])
        images = np.load(partial, mmap_mode="r")
    except (OSError, ValueError, IndexError):
        return None
    if header.get("build_key") != key or images.shape != (count, *CROP_SHAPE):
        log.info("discarding an unfinished build in %s made with other settings", cache_dir)
        return None
    done = []
    for line in lines[1:-1]:  # the last element follows the final newline: maybe torn
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            start, stop = int(parts[0]), int(parts[1])
            if 0 <= start < stop <= count:
                done.append((start, stop))
    return done


def _start_journal(cache_dir: Path, key: str, count: int) -> None:
    with atomic_path(cache_dir / PARTIAL_IMAGES_NAME) as tmp:
        open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, *CROP_SHAPE)).flush()
        _reserve_disk_space(tmp, count)
    write_text_atomic(cache_dir / JOURNAL_NAME, json.dumps({"build_key": key}) + "\n")


def _reserve_disk_space(path: Path, count: int) -> None:
    """Allocate the whole file now: a full disk under a memmap write would kill us (SIGBUS)."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise UserError(
                f"not enough disk space in {path.parent} for {count} crops ({size / 1e9:.1f} GB)"
            ) from None
        # Filesystems without fallocate support: fall back to a sparse file.
    finally:
        os.close(fd)


def _pending_tasks(count: int, done: list[tuple[int, int]], chunk: int) -> list[tuple[int, int]]:
    finished = np.zeros(count, dtype=bool)
    for start, stop in done:
        finished[start:stop] = True
    tasks = []
    i = 0
    while i < count:
        if finished[i]:
            i += 1
            continue
        stop = i
        while stop < count and stop - i < chunk and not finished[stop]:
            stop += 1
        tasks.append((i, stop))
        i = stop
    return tasks


def _good_ranges(start: int, stop: int, bad: list[tuple[int, str]]) -> list[tuple[int, int]]:
    ranges, begin = [], start
    for index in sorted(i for i, _ in bad):
        if index > begin:
            ranges.append((begin, index))
        begin = index + 1
    if begin < stop:
        ranges.append((begin, stop))
    return ranges


# ---------------------------------------------------------------- build


def build_config(model: str, listing: Listing, limit: int | None) -> dict:
    """Everything that determines the crops; a change means the old crops are stale."""
    return {
        "format_version": FORMAT_VERSION,
        "recipe": recipe_parameters(model),
        "opencv_version": cv2.__version__,
        "data_dir": str(listing.root.resolve()),
        "listing_source": listing.source,
        "listing_sha256": listing.digest(),
        "count": len(listing),
        "limit": limit,
    }


def _changed_fields(old: dict, new: dict) -> str:
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(names) or "build settings"


def _bad_images_error(listing: Listing, bad: list[tuple[int, str]], from_manifest=False):
    index, reason = min(bad)
    first = listing.root / listing.files[index]
    how = "were left out of the cache by --skip-bad and " if from_manifest else ""
    return UserError(
        f"{len(bad)} listed image(s) {how}cannot be read, the first being {first} ({reason}): "
        f"fix or remove them, or rerun with --skip-bad to leave them out",
        exit_code=2,
    )


def _check_files(listing: Listing, names: list[str]) -> list[tuple[int, str]]:
    """Re-check files a finished cache left out; (index, reason) for those still bad."""
    index_of = {name: i for i, name in enumerate(listing.files)}
    bad = []
    for name in names:
        _, reason = decode(str(listing.root / name))
        if reason is not None:
            bad.append((index_of.get(name, 0), reason))
    return bad


def _prepare_cache_dir(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create cache dir {cache_dir}: {err.strerror or err}") from None
    try:
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as err:
        raise UserError(f"cache dir {cache_dir} is not writable: {err.strerror or err}") from None


def build_cache(
    model: str,
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    val_map: str | os.PathLike | None = None,
    limit: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = False,
) -> BuildSummary:
    """Make ``cache_dir`` hold ``model``'s uint8 crops of the listing, doing only missing work.

    Unreadable files end the build with a UserError (exit code 2) naming the first and the
    count, unless ``skip_bad``, which leaves them out and records them in the manifest.
    """
    started = time.perf_counter()
    get_profile(model)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    listing = list_dataset(data_dir, val_map=val_map, limit=limit)
    cache_dir = Path(cache_dir)
    _prepare_cache_dir(cache_dir)
    config = build_config(model, listing, limit)
    key = config_key(config)

    manifest = read_manifest(cache_dir)
    if manifest and manifest.get("build_key") == key and manifest.get("complete"):
        skipped = manifest.get("skipped", [])
        if not skipped or skip_bad:
            return BuildSummary(
                model=model,
                cache_dir=cache_dir,
                images=manifest["count"],
                processed=0,
                skipped=tuple(s["file"] for s in skipped),
                seconds=time.perf_counter() - started,
                already_complete=True,
                fingerprint=manifest["fingerprint"],
            )
        still_bad = _check_files(listing, [s["file"] for s in skipped])
        if still_bad:
            raise _bad_images_error(listing, still_bad, from_manifest=True)
        log.info("files left out by --skip-bad are readable now: rebuilding %s", cache_dir)
    elif manifest and manifest.get("build_key") != key:
        log.info(
            "rebuilding the cache in %s: %s changed since it was built",
            cache_dir,
            _changed_fields(manifest.get("config", {}), config),
        )

    for name in FINAL_NAMES:  # the manifest goes first, so no reader sees stale crops
        (cache_dir / name).unlink(missing_ok=True)
    done = _read_journal(cache_dir, key, len(listing))
    if done is None:
        _start_journal(cache_dir, key, len(listing))
        done = []
    tasks = _pending_tasks(len(listing), done, _chunk_size(len(listing), workers))
    resumed = len(listing) - sum(stop - start for start, stop in tasks)
    if resumed:
        log.info("resuming: %d of %d images already done in %s", resumed, len(listing), cache_dir)
    write_manifest(cache_dir, _manifest(config, key, resumed, complete=False))

    bad = _run_tasks(cache_dir, listing, model, tasks, workers, resumed, quiet)
    processed = sum(stop - start for start, stop in tasks)
    if bad and not skip_bad:
        raise _bad_images_error(listing, bad)
    skipped = [{"file": listing.files[i], "reason": reason} for i, reason in sorted(bad)]
    _finish(cache_dir, listing, sorted(i for i, _ in bad))
    fingerprint = cache_fingerprint(config, [s["file"] for s in skipped])
    count = len(listing) - len(bad)
    manifest = _manifest(config, key, count, complete=True, skipped=skipped)
    manifest["fingerprint"] = fingerprint
    write_manifest(cache_dir, manifest)
    (cache_dir / JOURNAL_NAME).unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    if skipped:
        log.warning("left out %d unreadable image(s), listed in the manifest", len(skipped))
    return BuildSummary(
        model=model,
        cache_dir=cache_dir,
        images=count,
        processed=processed,
        skipped=tuple(s["file"] for s in skipped),
        seconds=seconds,
        already_complete=False,
        fingerprint=fingerprint,
    )


def _chunk_size(count: int, workers: int) -> int:
    # At least ~8 tasks per worker so the load balances, at most MAX_CHUNK per task.
    return max(1, min(MAX_CHUNK, -(-count // (workers * 8))))


def _manifest(config, key, done, *, complete, skipped=()) -> dict:
    count = config["count"] - len(skipped) if complete else config["count"]
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "build_key": key,
        "count": count,
        "done": done,
        "skipped": list(skipped),
        "complete": complete,
        "fingerprint": None,
    }


def _run_tasks(cache_dir, listing, model, tasks, workers, initial, quiet):
    """Run the tasks on worker threads, journaling finished ranges; return the bad files."""
    bad: list[tuple[int, str]] = []
    if not tasks:
        return bad
    workers = min(workers, len(tasks))
    log.info(
        "preprocessing %d images for %s into %s with %d thread(s)",
        sum(stop - start for start, stop in tasks),
        model,
        cache_dir,
        workers,
    )
    setup = {
        "partial": str(cache_dir / PARTIAL_IMAGES_NAME),
        "root": str(listing.root),
        "files": listing.files,
        "model": model,
    }
    bar = tqdm(
        total=len(listing),
        initial=initial,
        unit="img",
        desc=f"preprocess {model}",
        disable=quiet,
        dynamic_ncols=True,
    )
    with bar, open(cache_dir / JOURNAL_NAME, "a") as journal:

        def record(start: int, stop: int, chunk_bad: list) -> None:
            for a, b in _good_ranges(start, stop, chunk_bad):
                journal.write(f"{a} {b}\n")
            journal.flush()  # one write(2) per task: survives a kill of this process
            bad.extend(chunk_bad)
            bar.update(stop - start)

        run_ranges(RangeProcessor(**setup), tasks, workers, record)
    return bad


def _finish(cache_dir: Path, listing: Listing, bad_indices: list[int]) -> None:
    """Write labels, file names and the final images.npy (without unreadable files)."""
    partial = cache_dir / PARTIAL_IMAGES_NAME
    keep = np.setdiff1d(np.arange(len(listing)), np.asarray(bad_indices, dtype=np.int64))
    labels = np.asarray(listing.labels, dtype=np.int64)[keep]
    save_npy_atomic(cache_dir / LABELS_NAME, labels)
    names = [listing.files[i] for i in keep]
    write_text_atomic(cache_dir / FILES_NAME, "".join(f"{n}\n" for n in names))
    if not bad_indices:
        _fsync(partial)
        os.replace(partial, cache_dir / IMAGES_NAME)
        return
    source = np.load(partial, mmap_mode="r")
    with atomic_path(cache_dir / IMAGES_NAME) as tmp:
        out = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), *CROP_SHAPE))
        for j in range(0, len(keep), 256):
            out[j : j + 256] = source[keep[j : j + 256]]
        out.flush()
        del out
        _fsync(tmp)
    del source
    partial.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
