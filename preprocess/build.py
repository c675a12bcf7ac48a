"""Build a cache: decode and crop in worker threads, straight into a memory-mapped file.

The whole build holds the cache dir's lock. Every run stats the listed files (see
``incremental.py``) and re-crops only changed files, files new to the listing and damaged
rows, in place in ``images.npy`` (renamed to the partial file) when the rows stay the same,
otherwise into a new partial file the reused crops are copied to.

Each finished range of rows is appended to the resume journal (``journal.py``) after its
crops and digests are in the shared mappings, so a ``kill -9`` loses nothing: a rerun skips
journaled rows whose file kept its signature. A different recipe, OpenCV, data dir or
listing starts over and says so.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from core.cli import check_at_least_one
from core.disk import disk_full_says
from core.errors import UserError
from core.files import (
    LOCK_NAME,
    atomic_path,
    check_free_space,
    copy_npy_rows,
    create_reserved_npy,
    exclusive_lock,
    fsync_file,
    remove_stale_temporaries,
    save_npy_atomic,
    temporary_target,
    write_text_atomic,
)
from core.profiles import ModelProfile, get_profile
from core.records import Record
from core.system import available_cores
from preprocess.cache import (
    CROP_SHAPE,
    DAMAGED_NAME,
    DIGEST_SIZE,
    DIGESTS_NAME,
    FILES_NAME,
    FORMAT_VERSION,
    IMAGES_NAME,
    JOURNAL_NAME,
    LABELS_NAME,
    MANIFEST_NAME,
    OWN_NAMES,
    PARTIAL_DIGESTS_NAME,
    PARTIAL_IMAGES_NAME,
    PARTIAL_NAMES,
    PARTIAL_SIGNATURES_NAME,
    SIGNATURES_NAME,
    config_key,
    content_fingerprint,
    file_stat,
    read_damage,
    read_manifest,
    write_file_names,
)
from preprocess.calibration import list_calibration_images
from preprocess.dataset import Listing, list_dataset
from preprocess.incremental import (
    SIGNATURE_WIDTH,
    Plan,
    PreviousCache,
    load_previous,
    make_plan,
    stat_listing,
)
from preprocess.journal import (
    append_finished,
    journal_header,
    open_journal,
    read_journal,
    runs,
    start_journal,
)
from preprocess.recipes import decode, recipe_parameters
from preprocess.workers import RangeProcessor, run_ranges

log = logging.getLogger(__name__)

MAX_CHUNK = 32  # images per task: small enough for a fine-grained journal and progress bar
COPY_ROWS = 256  # rows per bulk copy between memmaps
CROP_BYTES = int(np.prod(CROP_SHAPE))
PER_IMAGE_BYTES = CROP_BYTES + DIGEST_SIZE + 8 * SIGNATURE_WIDTH


@dataclass(frozen=True)
class BuildSummary(Record):
    model_name: str
    cache_dir: Path
    images: int  # images in the finished cache
    processed: int  # images decoded by this run (0 when the cache was already up to date)
    skipped: tuple[str, ...]  # unreadable files left out (--skip-bad), as in the manifest
    seconds: float
    already_complete: bool
    fingerprint: str
    changes: dict | None = None  # changed/added/removed/damaged counts of a rebuild

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.already_complete:
            return (
                f"preprocess {self.model_name}: {self.images} images already cached in "
                f"{self.cache_dir}, nothing to do"
            )
        left_out = f", skipped {len(self.skipped)} unreadable" if self.skipped else ""
        return (
            f"preprocess {self.model_name}: {self.images} images cached in {self.cache_dir} "
            f"({self._what_changed()}{self.processed} processed in {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} img/s{left_out})"
        )

    def _what_changed(self) -> str:
        if self.changes is None:
            return ""
        c = self.changes
        noun = "image" if c["changed"] == 1 else "images"
        damaged = f", {c['damaged']} damaged" if c["damaged"] else ""
        return (
            f"re-cropped {c['changed']} changed {noun}, {c['added']} added, "
            f"{c['removed']} removed{damaged}; "
        )


# ---------------------------------------------------------------- partial files and tasks


def _remove_partial(cache_dir: Path) -> None:
    (cache_dir / JOURNAL_NAME).unlink(missing_ok=True)  # first: it vouches for the rest
    for name in PARTIAL_NAMES:
        (cache_dir / name).unlink(missing_ok=True)


def _pending_tasks(finished: np.ndarray, workers: int) -> list[tuple[int, int]]:
    """Ranges of consecutive unfinished rows: at least ~8 per worker so the load balances,
    at most MAX_CHUNK rows each."""
    chunk = max(1, min(MAX_CHUNK, -(-int((~finished).sum()) // (workers * 8))))
    tasks = []
    for start, stop in runs(~finished):
        tasks.extend((a, min(a + chunk, stop)) for a in range(start, stop, chunk))
    return tasks


# ---------------------------------------------------------------- checks before any work


def build_config(profile: ModelProfile, listing: Listing) -> dict:
    """What determines each crop besides its file; a change means no old crop is reusable."""
    return {
        "format_version": FORMAT_VERSION,
        "recipe": recipe_parameters(profile),
        "opencv_version": cv2.__version__,
        "data_dir": str(listing.root.resolve()),
    }


def _unreadable_error(listing: Listing, unreadable: list[tuple[int, str]], left_out=False):
    index, reason = min(unreadable)
    first = listing.root / listing.files[index]
    how = "were left out of the cache by --skip-bad and " if left_out else ""
    return UserError(
        f"{len(unreadable)} listed image(s) {how}cannot be read, the first being {first} "
        f"({reason}): fix or remove them, or rerun with --skip-bad to leave them out",
        exit_code=2,
    )


def _check_cache_dir(cache_dir: Path, data_root: Path, rebuild: bool) -> None:
    """Refuse a cache dir that is (or holds) the data, or holds files we did not write.

    Without a readable manifest or journal, only the lock and temporaries of our files
    prove nothing foreign is there. With ``rebuild`` (--force, or the pipeline repairing
    its own cache), a folder holding nothing but names this tool writes is rebuilt too:
    it is a cache whose manifest was damaged, or a build that died while starting over.
    """
    cache, data = cache_dir.resolve(), data_root.resolve()
    if cache == data or cache in data.parents:
        relation = "is" if cache == data else "contains"
        raise UserError(
            f"cache dir {cache_dir} {relation} the data dir {data_root}: give the cache a "
            f"folder of its own"
        )
    if not cache_dir.is_dir():
        return
    if read_manifest(cache_dir) is not None or journal_header(cache_dir)[0] is not None:
        return  # a cache, finished or not, that we wrote
    # Besides the lock, only temporaries of our files, left by a killed build.
    entries = sorted(os.listdir(cache_dir))
    unproven = [e for e in entries if e != LOCK_NAME and temporary_target(e) not in OWN_NAMES]
    if not unproven:
        return
    only_ours = all(entry in OWN_NAMES for entry in unproven)
    if only_ours and rebuild:
        log.info("rebuilding %s: its %s is missing or damaged", cache_dir, MANIFEST_NAME)
        return
    if only_ours and MANIFEST_NAME in unproven:
        raise UserError(
            f"the {MANIFEST_NAME} of cache dir {cache_dir} is damaged: rerun with --force to "
            f"rebuild the cache"
        )
    foreign = [entry for entry in unproven if entry not in OWN_NAMES] or unproven
    raise UserError(
        f"cache dir {cache_dir} holds {foreign[0]}, which preprocess did not write: "
        f"choose an empty or new folder for the cache"
    )


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


# ---------------------------------------------------------------- build


def build_cache(
    model_name: str,
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    val_map: str | os.PathLike | None = None,
    limit: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = False,
    force: bool = False,
    wait: bool = False,
    repair: bool = False,
    calibration_list: str | os.PathLike | None = None,
) -> BuildSummary:
    """Make ``cache_dir`` hold ``model_name``'s uint8 crops of the listing, doing only missing work.

    The listing is the data dir's (or ``val_map``'s); with ``calibration_list`` (an MLPerf
    list file, or ``"mlperf"`` for MLPerf's own) only the images it names, in its order,
    each with its label from that listing. ``limit`` keeps the first N of either.

    Unreadable files end the build with a UserError (exit code 2) naming the first and the
    count, unless ``skip_bad``, which leaves them out and records them in the manifest.
    ``force`` re-crops everything; ``wait`` waits for another build of this cache dir to
    end instead of refusing to start. ``force`` and ``repair`` both rebuild a cache dir
    whose manifest is damaged when it holds only files this tool writes (a folder holding
    others is always refused); ``repair`` leaves a sound cache as it is.
    """
    started = time.perf_counter()
    profile = get_profile(model_name)
    workers = available_cores() if workers is None else workers
    check_at_least_one(workers, "--workers")
    # Listed before the cache dir is touched: a bad listing or list writes nothing.
    if calibration_list is None:
        listing = list_dataset(data_dir, val_map=val_map, limit=limit)
    else:
        listing = list_calibration_images(calibration_list, data_dir, val_map, limit)
    cache_dir = Path(cache_dir)
    _check_cache_dir(cache_dir, listing.root, rebuild=force or repair)
    _prepare_cache_dir(cache_dir)
    build = _Build(profile, listing, cache_dir, workers, skip_bad, quiet, started)
    full = (
        f"not enough disk space in {cache_dir} for the cache: free some space and rerun the "
        "same command to continue"
    )
    with disk_full_says(full), exclusive_lock(cache_dir, "cache dir", wait=wait):
        return build.run(force)


class _Build:
    """One run of build_cache, under the cache dir's lock."""

    def __init__(self, profile, listing, cache_dir, workers, skip_bad, quiet, started):
        self.profile, self.listing, self.cache_dir = profile, listing, cache_dir
        self.workers, self.skip_bad, self.quiet, self.started = workers, skip_bad, quiet, started
        self.config = build_config(profile, listing)
        # What the rows of a partial build are: recipe settings and the listed names, in order.
        self.key = config_key({"config": self.config, "files": listing.files})
        self.signatures = np.zeros((0, SIGNATURE_WIDTH), dtype=np.int64)

    def run(self, force: bool) -> BuildSummary:
        """Resume, update or confirm what the cache dir holds; start over when none applies."""
        if removed := remove_stale_temporaries(self.cache_dir):
            log.info("removed %d temporary file(s) an interrupted run left", removed)
        self.signatures = stat_listing(self.listing)
        manifest = read_manifest(self.cache_dir)
        if force:
            log.info("--force: re-cropping every image into %s", self.cache_dir)
            return self._fresh()
        if manifest and manifest.get("complete"):
            if manifest["config"] != self.config:
                old = manifest["config"]
                changed = sorted(k for k, v in self.config.items() if old.get(k) != v)
                log.info(
                    "rebuilding the cache in %s: %s changed since it was built",
                    self.cache_dir,
                    ", ".join(changed) or "build settings",
                )
                return self._fresh()
            previous = load_previous(self.cache_dir, manifest, self.workers)
            if previous is None:  # it cannot be trusted; load_previous said why
                return self._fresh()
            return self._update(manifest, previous)
        finished = read_journal(self.cache_dir, self.key, self.signatures)
        if finished is None:  # no interrupted build of this listing and these settings
            return self._fresh()
        if finished.any():
            log.info(
                "resuming: %d of %d images already done in %s",
                finished.sum(),
                len(finished),
                self.cache_dir,
            )
        return self._crop_and_finish(finished)

    def _fresh(self) -> BuildSummary:
        count = len(self.listing)
        # Manifest first: no stale reads. All of them: without a manifest or journal, a
        # leftover file would make the next run refuse the folder as not ours.
        finished = (IMAGES_NAME, DIGESTS_NAME, LABELS_NAME, FILES_NAME, SIGNATURES_NAME)
        for name in (MANIFEST_NAME, *finished, DAMAGED_NAME):
            (self.cache_dir / name).unlink(missing_ok=True)
        digests = np.zeros((count, DIGEST_SIZE), dtype=np.uint8)
        self._start_partial(digests, count * PER_IMAGE_BYTES, done=0, adopt_images=False)
        return self._crop_and_finish(np.zeros(count, dtype=bool))

    def _update(self, manifest: dict, previous: PreviousCache) -> BuildSummary:
        plan = make_plan(self.listing, self.signatures, previous, self.skip_bad)
        if plan.recheck:
            root, files = self.listing.root, self.listing.files
            unreadable = [(i, r) for i in plan.recheck if (r := decode(str(root / files[i]))[1])]
            if unreadable:
                raise _unreadable_error(self.listing, unreadable, left_out=True)
            log.info("files left out by --skip-bad are readable now: adding them to the cache")
            plan.changes["added"] += len(plan.recheck)
        # The new rows are the old ones, in the same order: no crop moves.
        if np.array_equal(plan.sources[plan.kept], np.arange(len(previous.files))):
            return self._same_crops(manifest, previous, plan)
        return self._rebuild_from(previous, plan)

    def _rebuild_from(self, previous: PreviousCache, plan: Plan) -> BuildSummary:
        count = len(self.listing)
        reused = plan.sources >= 0
        digests = np.zeros((count, DIGEST_SIZE), dtype=np.uint8)
        digests[reused] = previous.digests[plan.sources[reused]]
        in_place = (
            self.listing.files == previous.files
            and not plan.left_out
            and os.access(self.cache_dir / IMAGES_NAME, os.W_OK)
        )
        metadata = count * (PER_IMAGE_BYTES - CROP_BYTES)  # digests and signatures
        needed = 2 * metadata + (0 if in_place else count * CROP_BYTES)  # old ones stay too
        self._start_partial(digests, needed, done=int(reused.sum()), adopt_images=in_place)
        if not in_place:
            log.info("copying %d unchanged crops in %s", reused.sum(), self.cache_dir)
            rows = np.flatnonzero(reused)
            partial = self.cache_dir / PARTIAL_IMAGES_NAME
            copy_npy_rows(
                self.cache_dir / IMAGES_NAME, partial, rows, plan.sources[rows], COPY_ROWS
            )
        with open_journal(self.cache_dir) as journal:
            append_finished(journal, reused)
        return self._crop_and_finish(reused, plan.left_out, plan.changes, previous.damage_text)

    def _start_partial(self, digests, needed_bytes: int, done: int, adopt_images: bool):
        """Create the partial files (``adopt_images``: the finished images.npy becomes one, its
        rows unchanged), then the journal that makes them resumable."""
        cache_dir, count = self.cache_dir, len(self.listing)
        _remove_partial(cache_dir)
        check_free_space(cache_dir, needed_bytes, f"{count} crops")
        self._write_manifest(count, done)
        if adopt_images:
            os.replace(cache_dir / IMAGES_NAME, cache_dir / PARTIAL_IMAGES_NAME)
        else:
            with atomic_path(cache_dir / PARTIAL_IMAGES_NAME) as tmp:
                create_reserved_npy(tmp, (count, *CROP_SHAPE), f"{count} crops")
        save_npy_atomic(cache_dir / PARTIAL_DIGESTS_NAME, digests)
        save_npy_atomic(cache_dir / PARTIAL_SIGNATURES_NAME, self.signatures)
        start_journal(cache_dir, self.key)

    def _same_crops(self, manifest: dict, previous: PreviousCache, plan: Plan) -> BuildSummary:
        """No crop to redo: rewrite only what changed around them (labels, the list of
        files left out, images.npy's recorded stat after a move); often nothing at all.
        Signatures cannot differ: ``make_plan`` reuses only rows whose file kept its own."""
        labels = np.asarray(self.listing.labels, dtype=np.int64)[plan.kept]
        left_out = self._left_out_entries(sorted(plan.left_out.items()))
        fingerprint = content_fingerprint(self.config, previous.digests, labels, previous.files)
        unchanged = (
            fingerprint == manifest["fingerprint"]
            and left_out == manifest.get("skipped")
            and manifest.get("listing_source") == self.listing.source
        )
        self._clear_damage(previous.damage_text)  # it names no row still damaged
        if not unchanged:
            save_npy_atomic(self.cache_dir / LABELS_NAME, labels)
        if not unchanged or previous.images_stat != manifest.get("images_stat"):
            self._write_manifest(len(labels), len(labels), left_out, fingerprint)
        return self._summary(len(labels), left_out, fingerprint, already_complete=unchanged)

    def _clear_damage(self, damage_text: str) -> None:
        """Remove damaged.json if it still says what this build read and handled: readers
        take no lock, and one may have recorded new damage since."""
        if damage_text and read_damage(self.cache_dir)[0] == damage_text:
            (self.cache_dir / DAMAGED_NAME).unlink(missing_ok=True)

    def _write_manifest(self, count: int, done: int, left_out=(), fingerprint=None) -> None:
        """Without ``fingerprint``: a build in progress. With it: the finished cache."""
        manifest = {
            "format_version": FORMAT_VERSION,
            "config": self.config,
            "listing_source": self.listing.source,
            "count": count,
            "done": done,
            "skipped": list(left_out),  # the files --skip-bad left out
            "complete": fingerprint is not None,
            "fingerprint": fingerprint,
        }
        if fingerprint is not None:
            manifest["images_stat"] = file_stat(self.cache_dir / IMAGES_NAME)
        write_text_atomic(self.cache_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")

    def _left_out_entries(self, left_out: list[tuple[int, str]]) -> list[dict]:
        files, signatures = self.listing.files, self.signatures
        return [
            {"file": files[i], "reason": r, "signature": signatures[i].tolist()}
            for i, r in left_out
        ]

    def _summary(
        self, count, left_out, fingerprint, processed=0, changes=None, already_complete=False
    ):
        return BuildSummary(
            model_name=self.profile.name,
            cache_dir=self.cache_dir,
            images=count,
            processed=processed,
            skipped=tuple(s["file"] for s in left_out),
            seconds=time.perf_counter() - self.started,
            already_complete=already_complete,
            fingerprint=fingerprint,
            changes=changes,
        )

    # -- cropping and finishing

    def _crop_and_finish(self, finished, left_out=None, changes=None, damage_text=""):
        """Crop every row not ``finished`` and not ``left_out`` (index -> reason: left out
        before and still), then finish the cache."""
        left_out = left_out or {}
        no_crop_needed = finished.copy()
        no_crop_needed[list(left_out)] = True
        tasks = _pending_tasks(no_crop_needed, self.workers)
        unreadable = self._run_tasks(tasks, initial=int(no_crop_needed.sum()))
        if unreadable and not self.skip_bad:
            raise _unreadable_error(self.listing, unreadable)
        left_out_rows = sorted(unreadable + list(left_out.items()))
        entries = self._left_out_entries(left_out_rows)
        count, fingerprint = self._finish([i for i, _ in left_out_rows], entries)
        self._clear_damage(damage_text)  # those rows are redone
        if entries:
            log.warning("left out %d unreadable image(s), listed in the manifest", len(entries))
        processed = sum(stop - start for start, stop in tasks)
        return self._summary(count, entries, fingerprint, processed, changes)

    def _run_tasks(self, tasks: list[tuple[int, int]], initial: int) -> list[tuple[int, str]]:
        """Run the tasks on worker threads, journaling finished ranges; return the
        (index, reason) of the files that cannot be read."""
        unreadable: list[tuple[int, str]] = []
        if not tasks:
            return unreadable
        workers = min(self.workers, len(tasks))
        todo = sum(stop - start for start, stop in tasks)
        name, cache_dir = self.profile.name, self.cache_dir
        log.info(
            "preprocessing %d images for %s into %s with %d thread(s)",
            todo,
            name,
            cache_dir,
            workers,
        )
        processor = RangeProcessor(cache_dir, self.listing, self.profile)
        bar = tqdm(
            total=len(self.listing),
            initial=initial,
            unit="img",
            desc=f"preprocess {name}",
            disable=self.quiet,
            dynamic_ncols=True,
        )
        with bar, open_journal(cache_dir) as journal:

            def record(start: int, stop: int, chunk_unreadable: list) -> None:
                good = np.ones(stop - start, dtype=bool)
                good[[i - start for i, _ in chunk_unreadable]] = False
                append_finished(journal, good, offset=start)  # survives a kill of this process
                unreadable.extend(chunk_unreadable)
                bar.update(stop - start)

            run_ranges(processor, tasks, workers, record)
        processor.flush()
        return unreadable

    def _finish(self, left_out_rows: list[int], entries: list[dict]) -> tuple[int, str]:
        """Write digests, labels, names, signatures and the final images.npy (without the
        rows left out), then the complete manifest; return (count, fingerprint)."""
        cache_dir = self.cache_dir
        keep = np.setdiff1d(np.arange(len(self.listing)), np.asarray(left_out_rows, dtype=np.int64))
        digests = np.load(cache_dir / PARTIAL_DIGESTS_NAME)[keep]
        labels = np.asarray(self.listing.labels, dtype=np.int64)[keep]
        names = [self.listing.files[i] for i in keep]
        fingerprint = content_fingerprint(self.config, digests, labels, names)
        save_npy_atomic(cache_dir / DIGESTS_NAME, digests)
        save_npy_atomic(cache_dir / LABELS_NAME, labels)
        save_npy_atomic(cache_dir / SIGNATURES_NAME, self.signatures[keep])
        write_file_names(cache_dir / FILES_NAME, names)
        partial = cache_dir / PARTIAL_IMAGES_NAME
        if left_out_rows:
            with atomic_path(cache_dir / IMAGES_NAME) as tmp:
                _compact(partial, tmp, keep)
            partial.unlink()
        else:
            fsync_file(partial)
            os.replace(partial, cache_dir / IMAGES_NAME)
        self._write_manifest(len(keep), len(keep), entries, fingerprint)
        _remove_partial(cache_dir)
        return len(keep), fingerprint


def _compact(partial: Path, out_path: Path, keep: np.ndarray) -> None:
    """Copy rows ``keep`` of the partial file into ``out_path``, its space reserved first."""
    check_free_space(out_path.parent, len(keep) * CROP_BYTES, f"the {len(keep)} readable crops")
    create_reserved_npy(out_path, (len(keep), *CROP_SHAPE), f"{len(keep)} crops")
    copy_npy_rows(partial, out_path, np.arange(len(keep)), keep, COPY_ROWS)
    fsync_file(out_path)
