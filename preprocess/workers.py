"""Decoding and cropping ranges of images straight into the partial memmap, in threads.

Threads, not processes: file reads, ``cv2.imdecode`` and ``cv2.resize`` release the GIL,
so worker threads use every core, with no start-up cost (a fresh worker process spends
~0.3 s importing numpy and cv2), no fork hazards (a fork of a parent that already ran OpenCV or
torch can inherit held thread-pool locks), and nothing left running if the process is
killed. Each thread writes disjoint rows of the shared memmap.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import cv2
import numpy as np

from core.profiles import ModelProfile
from core.system import temporarily
from preprocess.cache import PARTIAL_DIGESTS_NAME, PARTIAL_IMAGES_NAME, crop_digest
from preprocess.dataset import Listing
from preprocess.recipes import crop_bgr_image, decode


class RangeProcessor:
    """Crops images ``start:stop`` of a listing into the memmapped partial images file and
    writes each crop's digest beside it (hashlib releases the GIL, so this runs in parallel
    too, on bytes still in the CPU cache)."""

    def __init__(self, cache_dir: Path, listing: Listing, profile: ModelProfile):
        self.images = np.load(cache_dir / PARTIAL_IMAGES_NAME, mmap_mode="r+")
        self.digests = np.load(cache_dir / PARTIAL_DIGESTS_NAME, mmap_mode="r+")
        self.root, self.files, self.profile = str(listing.root), listing.files, profile

    def __call__(self, start: int, stop: int) -> list[tuple[int, str]]:
        """Process one range; return (index, reason) for the files that cannot be read."""
        unreadable = []
        for i in range(start, stop):
            bgr, reason = decode(os.path.join(self.root, self.files[i]))
            if bgr is None:
                unreadable.append((i, reason))
            else:
                self.images[i] = crop_bgr_image(bgr, self.profile)
                self.digests[i] = np.frombuffer(crop_digest(self.images[i]), dtype=np.uint8)
        return unreadable

    def flush(self) -> None:
        self.images.flush()
        self.digests.flush()


def run_ranges(
    process: Callable[[int, int], list],
    tasks: list[tuple[int, int]],
    workers: int,
    on_result: Callable[[int, int, list], None],
) -> None:
    """Run ``tasks`` on ``workers`` threads; ``on_result(start, stop, unreadable)`` runs in this
    thread as each finishes. On an exception (Ctrl-C included) no new range starts."""
    if workers == 1:
        for start, stop in tasks:
            on_result(start, stop, process(start, stop))
        return
    pending, running = iter(tasks), {}
    # One OpenCV thread per call while our own threads run; the caller's setting comes back.
    one_opencv_thread = temporarily(cv2.getNumThreads, cv2.setNumThreads, 1)
    with one_opencv_thread, ThreadPoolExecutor(workers, "preprocess") as pool:

        def submit(count: int) -> None:
            for task in itertools.islice(pending, count):
                running[pool.submit(process, *task)] = task

        try:
            submit(workers * 2)  # two in flight per thread: none waits for its next range
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    start, stop = running.pop(future)
                    on_result(start, stop, future.result())
                    submit(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
