"""Stage 1: MLPerf-exact OpenCV preprocessing into a resumable, memory-mapped uint8 cache.

Public API::

    mlperf_preprocess(path, profile) -> float32 (224, 224, 3)  # MLPerf's array for one file
    normalize(u8_batch, profile) -> float32, same shape         # uint8 crops -> MLPerf floats
    build_cache(model_name, data_dir, cache_dir, ...) -> BuildSummary
    load_cache(cache_dir, profile) -> PreprocessedCache        # .read(a, b) .labels .files ...

``profile`` is a ``core.profiles.ModelProfile`` or a model name.
"""

from preprocess.build import BuildSummary, build_cache
from preprocess.cache import PreprocessedCache, load_cache
from preprocess.dataset import Listing, list_dataset
from preprocess.recipes import crop_uint8, mlperf_preprocess, normalize

__all__ = [
    "BuildSummary",
    "Listing",
    "PreprocessedCache",
    "build_cache",
    "crop_uint8",
    "list_dataset",
    "load_cache",
    "mlperf_preprocess",
    "normalize",
]
