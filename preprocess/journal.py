"""The resume journal of a cache build: which ranges of rows are finished.

``journal.txt`` starts with a JSON line naming the build key (recipe settings and the
listed names, in order); then one ``start stop`` line per finished range of rows, appended
only once those rows' crops and digests are in the shared mappings, so a ``kill -9`` loses
nothing the journal claims. A rerun skips journaled rows whose file kept its signature; a
torn last line is ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TextIO

import numpy as np

from core.files import write_text_atomic
from preprocess.cache import (
    CROP_SHAPE,
    DIGEST_SIZE,
    JOURNAL_NAME,
    PARTIAL_DIGESTS_NAME,
    PARTIAL_IMAGES_NAME,
    PARTIAL_SIGNATURES_NAME,
)

log = logging.getLogger(__name__)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True values."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()
    return list(zip(starts, stops, strict=True))


def start_journal(cache_dir: Path, key: str) -> None:
    """A new journal for the build ``key``, claiming no row yet (written last: it makes the
    partial files beside it resumable)."""
    write_text_atomic(cache_dir / JOURNAL_NAME, json.dumps({"build_key": key}) + "\n")


def open_journal(cache_dir: Path) -> TextIO:
    """The journal, opened for ``append_finished``."""
    return open(cache_dir / JOURNAL_NAME, "a")


def append_finished(journal: TextIO, finished: np.ndarray, offset: int = 0) -> None:
    """Claim the rows ``offset + i`` where ``finished[i]``: one write(2), which survives a kill
    of this process."""
    journal.write("".join(f"{offset + a} {offset + b}\n" for a, b in runs(finished)))
    journal.flush()


def journal_header(cache_dir: Path) -> tuple[str | None, list[str]]:
    """(build key, range lines) of ``journal.txt``; (None, []) when it is absent or not ours."""
    try:
        first, *lines = (cache_dir / JOURNAL_NAME).read_text().split("\n")
        header = json.loads(first)
    except (OSError, ValueError):
        return None, []
    return (header.get("build_key") if isinstance(header, dict) else None), lines


def read_journal(cache_dir: Path, key: str, signatures: np.ndarray) -> np.ndarray | None:
    """Rows finished by an interrupted build with this key whose files kept their
    signature (bool mask), or None when there is nothing to resume."""
    count = len(signatures)
    build_key, lines = journal_header(cache_dir)
    if build_key is None:
        return None
    try:
        images = np.load(cache_dir / PARTIAL_IMAGES_NAME, mmap_mode="r")
        digests = np.load(cache_dir / PARTIAL_DIGESTS_NAME, mmap_mode="r")
        cropped_from = np.load(cache_dir / PARTIAL_SIGNATURES_NAME)
    except (OSError, ValueError):
        return None
    if (
        build_key != key
        or images.shape != (count, *CROP_SHAPE)
        or digests.shape != (count, DIGEST_SIZE)
        or cropped_from.shape != signatures.shape
    ):
        log.info("discarding an unfinished build in %s made with other settings", cache_dir)
        return None
    finished = np.zeros(count, dtype=bool)
    for line in lines[:-1]:  # the last element follows the final newline: maybe torn
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            start, stop = int(parts[0]), int(parts[1])
            if 0 <= start < stop <= count:
                finished[start:stop] = True
    return finished & (cropped_from == signatures).all(axis=1)
