"""The calibration set a transform sees, and its record in results.json.

A calibration cache (``preprocess.calibration``: MLPerf's list, or the user's, built with the
evaluation's recipe and trust rules) when one is given; otherwise the first images of the
evaluated cache, which results.json and the summary flag as not MLPerf's list.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from core.profiles import ModelProfile
from preprocess.calibration import (
    DEFAULT_CALIBRATION_IMAGES,
    MLPERF_LIST_SHA256,
    NOT_MLPERF_NOTE,
)

log = logging.getLogger(__name__)

# Images per calibration batch handed to a transform.
CALIBRATION_BATCH = 32


class CalibrationBatches:
    """MLPerf-normalised NCHW float32 batches (torch tensors: channels-last views of the
    NHWC crops) of ``cache`` rows ``0:images``, read with their digests checked. A method
    may iterate it as often as it needs; ``len()`` is the number of batches."""

    def __init__(self, cache, images: int, batch_size: int = CALIBRATION_BATCH):
        self.cache, self.images, self.batch_size = cache, images, batch_size

    def __len__(self) -> int:
        return -(-self.images // self.batch_size)

    def __iter__(self) -> Iterator:
        import torch

        for start in range(0, self.images, self.batch_size):
            stop = min(start + self.batch_size, self.images)
            nhwc = np.ascontiguousarray(self.cache.normalized(start, stop), dtype=np.float32)
            yield torch.from_numpy(nhwc).permute(0, 3, 1, 2)


def names_sha256(names: list[str]) -> str:
    """sha256 of the names as an MLPerf list file holds them (one per line): for a cache
    built from MLPerf's list this is that file's published digest."""
    return hashlib.sha256("".join(f"{name}\n" for name in names).encode()).hexdigest()


def calibration_set(
    profile: ModelProfile, evaluated_cache, calibration_cache_dir=None
) -> tuple[CalibrationBatches, dict]:
    """The batches a transform calibrates on, and what results.json records about them."""
    if calibration_cache_dir is not None:
        from preprocess import load_cache

        cache = load_cache(Path(calibration_cache_dir), profile)
        images, source = len(cache), f"calibration cache {calibration_cache_dir}"
    else:
        cache = evaluated_cache
        images = min(DEFAULT_CALIBRATION_IMAGES, len(cache))
        source = f"the first {images} images of the evaluated cache"
    names = list(cache.files[:images])
    digest = names_sha256(names)
    mlperf = digest == MLPERF_LIST_SHA256
    record = {
        "source": source,
        "images": images,
        "names_sha256": digest,
        "mlperf_list": mlperf,
        "cache_fingerprint": getattr(cache, "fingerprint", None),
        "note": None if mlperf else NOT_MLPERF_NOTE,
    }
    if not mlperf:
        log.warning("%s: %s", NOT_MLPERF_NOTE, source)
    return CalibrationBatches(cache, images), record
