"""Stage 1: MLPerf-exact OpenCV preprocessing into a resumable, memory-mapped uint8 cache.

Public API (``profile`` is a ``core.profiles.ModelProfile`` or a model name)::

    mlperf_preprocess(path, profile) -> float32 (224, 224, 3)  # MLPerf's array for one file
    crop_uint8(path, profile) -> uint8 (224, 224, 3)           # the crop the cache stores
    normalize(u8_batch, profile) -> float32, same shape         # uint8 crops -> MLPerf floats
    build_cache(model_name, data_dir, cache_dir, ...) -> BuildSummary
    load_cache(cache_dir, profile) -> PreprocessedCache        # .read(a, b) .labels .files ...
"""

from preprocess.build import build_cache
from preprocess.cache import load_cache
from preprocess.recipes import crop_uint8, mlperf_preprocess, normalize

__all__ = ["build_cache", "crop_uint8", "load_cache", "mlperf_preprocess", "normalize"]
