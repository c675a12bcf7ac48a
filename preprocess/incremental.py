"""What a rebuild must redo: per-file signatures, the previous cache, and the plan.

Each listed file's signature is (size, mtime_ns, ctime_ns, inode). Size and mtime catch
ordinary edits. ctime and inode are there because mtime can be carried over: ``mv``,
``cp -p``, ``rsync -t`` and tar all set a file's mtime to the source's, and files
unpacked from one archive share mtimes and often sizes, so swapping two of them keeps
size and mtime. Renaming or replacing a file always gives it a new ctime (the kernel sets
it; no tool can carry it over) and usually a new inode. The price is false alarms only:
a ``chmod``/``chown``/``touch`` or a copy of the data re-crops those files.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.cache import (
    IMAGES_NAME,
    SIGNATURES_NAME,
    file_stat,
    mismatched_rows,
    read_arrays,
    read_damage,
)
from preprocess.dataset import Listing

log = logging.getLogger(__name__)

SIGNATURE_WIDTH = 4  # size, mtime_ns, ctime_ns, inode; -1 everywhere for a missing file


def stat_listing(listing: Listing) -> np.ndarray:
    """int64 (N, 4) signatures of the listed files, one ``os.stat`` each (relative to an
    open descriptor of the data dir, so the kernel does not walk its path every time)."""
    rows = []
    root_fd = os.open(listing.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in listing.files:
            try:
                st = os.stat(name, dir_fd=root_fd)
                rows.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
            except OSError:
                rows.append((-1,) * SIGNATURE_WIDTH)
    finally:
        os.close(root_fd)
    return np.array(rows, dtype=np.int64).reshape(len(rows), SIGNATURE_WIDTH)


@dataclass
class PreviousCache:
    """A finished cache whose crops may be reused (same recipe, OpenCV and data dir)."""

    files: list[str]
    signatures: np.ndarray  # int64 (N, 4)
    digests: np.ndarray  # uint8 (N, 32)
    left_out: dict[str, dict]  # file -> {"reason", "signature"}: left out by --skip-bad
    damaged: np.ndarray  # bool (N,): rows whose bytes no longer match their digest
    damage_text: str  # damaged.json as read, so the build removes only what it handled
    images_stat: dict  # images.npy's size and mtime now (to record if it only moved)


def load_previous(cache_dir: Path, manifest: dict, workers: int) -> PreviousCache | None:
    """The finished cache in ``cache_dir`` as a PreviousCache, or None if it cannot be
    trusted (files missing, or digests/labels/names not those the manifest names). Its
    layout is the current one: the caller compared its config, which holds the version."""
    try:
        images, _, files, digests = read_arrays(cache_dir, manifest)
        signatures = np.load(cache_dir / SIGNATURES_NAME)
        if signatures.shape != (len(files), SIGNATURE_WIDTH):
            raise ValueError(f"does not match its manifest ({len(files)} images)")
    except (OSError, ValueError) as err:
        log.warning("the cache in %s %s: rebuilding", cache_dir, err)
        return None
    images_stat = file_stat(cache_dir / IMAGES_NAME)
    damage_text, entries = read_damage(cache_dir)
    damaged = _damaged_rows(entries, files, digests)
    if images_stat != manifest.get("images_stat"):
        damaged |= _verify_all(images, digests, workers, cache_dir)
    left_out = {s["file"]: s for s in manifest.get("skipped", []) if "file" in s}
    return PreviousCache(files, signatures, digests, left_out, damaged, damage_text, images_stat)


def _damaged_rows(entries: list[dict], files: list[str], digests: np.ndarray) -> np.ndarray:
    """Rows named in damaged.json that still hold the crop that was found damaged."""
    damaged = np.zeros(len(files), dtype=bool)
    for entry in entries:
        i = entry.get("index")
        if (
            isinstance(i, int)
            and 0 <= i < len(files)
            and files[i] == entry.get("file")
            and digests[i].tobytes().hex() == entry.get("digest")
        ):
            damaged[i] = True
    return damaged


def _verify_all(images: np.ndarray, digests: np.ndarray, workers: int, cache_dir) -> np.ndarray:
    """images.npy was written to since the build: check every crop against its digest."""
    log.warning("%s changed since it was built: checking every crop", cache_dir / IMAGES_NAME)

    def check(start: int) -> np.ndarray:
        return mismatched_rows(images[start : start + 256], digests[start : start + 256])

    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(check, range(0, len(images), 256))
        damaged = np.concatenate([np.zeros(0, dtype=bool), *parts])
    if damaged.any():
        log.warning("%d crop(s) in %s no longer match their digest", damaged.sum(), cache_dir)
    return damaged


@dataclass
class Plan:
    """Per listed file: the old row to reuse (``sources[i] >= 0``), or -1 to crop it.
    ``left_out`` holds files left out before and left out again (--skip-bad, unchanged)."""

    sources: np.ndarray  # int64 (M,)
    left_out: dict[int, str]  # listing index -> reason
    recheck: list[int]  # left out before, unchanged, and --skip-bad not given
    changes: dict[str, int]  # how many files changed, were added or removed, rows damaged

    @property
    def kept(self) -> np.ndarray:
        """bool (M,): listed files that get a row in the new cache (all but ``left_out``)."""
        mask = np.ones(len(self.sources), dtype=bool)
        mask[list(self.left_out)] = False
        return mask


def make_plan(
    listing: Listing, signatures: np.ndarray, previous: PreviousCache, skip_bad: bool
) -> Plan:
    """Reuse every row whose file has the same name and signature and is not damaged.

    Vectorised over the rows that exist already; only new names are looked at one by one.
    """
    index = {name: i for i, name in enumerate(previous.files)}
    rows = np.array([index.get(n, -1) for n in listing.files], dtype=np.int64)
    present = rows >= 0
    same, damaged = np.zeros(len(rows), dtype=bool), np.zeros(len(rows), dtype=bool)
    hits = np.flatnonzero(present)  # empty when the old cache holds no image at all
    same[hits] = (signatures[hits] == previous.signatures[rows[hits]]).all(axis=1)
    damaged[hits] = same[hits] & previous.damaged[rows[hits]]
    sources = np.where(same & ~damaged, rows, -1)
    left_out, recheck = {}, []
    changed, added = int((present & ~same).sum()), 0
    for i in np.flatnonzero(~present).tolist():
        entry = previous.left_out.get(listing.files[i])
        if entry is None:
            added += 1
        elif entry.get("signature") != signatures[i].tolist():
            changed += 1
        elif skip_bad:
            left_out[i] = entry.get("reason", "unreadable")
        else:
            recheck.append(i)
    listed = set(listing.files)
    removed = sum(1 for name in [*previous.files, *previous.left_out] if name not in listed)
    changes = dict(changed=changed, added=added, removed=removed, damaged=int(damaged.sum()))
    return Plan(sources, left_out, recheck, changes)
