"""Stage 1: MLPerf-exact OpenCV preprocessing into a resumable, memory-mapped uint8 cache.

Public API::

    mlperf_preprocess(path, model) -> float32 (224, 224, 3)   # MLPerf's array for one file
    normalize(u8_batch, model) -> float32, same shape          # uint8 crops -> MLPerf floats
    build_cache(model, data_dir, cache_dir, ...) -> BuildSummary
    load_cache(cache_dir, model) -> PreprocessedCache          # .read(a, b) .labels .files ...

Names are imported on first use, so worker processes and ``load_cache`` callers do not pay
for modules they never touch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BuildSummary": "preprocess.build",
    "build_cache": "preprocess.build",
    "PreprocessedCache": "preprocess.cache",
    "load_cache": "preprocess.cache",
    "Listing": "preprocess.dataset",
    "list_dataset": "preprocess.dataset",
    "crop_uint8": "preprocess.recipes",
    "mlperf_preprocess": "preprocess.recipes",
    "normalize": "preprocess.recipes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'preprocess' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
