"""The LoadGen pass of an evaluation: the cached crops served to MLPerf LoadGen's queries."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.profiles import CROP_SIZE
from eval.backends import Backend
from eval.metrics import labels_from_classes, top_k_classes
from eval.options import EvalSettings

if TYPE_CHECKING:
    from eval.loadgen import LoadgenResult


class CacheCrops:
    """The first ``count`` crops of a cache as a read-only array-like for LoadGen; indexing
    reads through ``cache.read``, so every crop is checked against its build-time digest."""

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
            key = np.arange(*key.indices(self.count))
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
    """Answer LoadGen's queries (mode ``settings.loadgen``) over the first ``count`` cached
    images with ``backend``'s predicted labels (argmax - offset), as MLPerf's reference does."""
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
