"""A warm compile cache makes a fast build cheap, which changes what "auto" on CUDA should
pick: the cost of each cached build is remembered on disk, beside that cache.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from core.files import write_text_atomic

# Builds of the one builder with an on-disk compile cache are timed into this file beside
# that cache: a later "auto" on CUDA reads a recorded time as "warm cache, cheap build".
CACHED_BUILDER = "fast:inductor"


def _build_record_path() -> Path | None:
    """A small JSON beside inductor's on-disk compile cache (None if unavailable)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    return Path(cache_dir()) / "mlperf-port-fast-builds.json"


def _build_key(model_name: str | None, device_type: str, batch_size: int | None) -> str:
    return f"{model_name}|{device_type}|{batch_size}|torch {torch.__version__}"


def recorded_build_seconds(model_name: str | None, device_type: str, batch_size: int | None):
    """Seconds of the last inductor build of this model/device/batch, if one was recorded."""
    path = _build_record_path()
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get(_build_key(model_name, device_type, batch_size))
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def record_build_seconds(
    model_name: str | None, device_type: str, batch_size: int, seconds: float
) -> None:
    """Remember an inductor build's cost: the next "auto" then knows its cache is warm."""
    path = _build_record_path()
    if path is None or model_name is None:
        return
    with contextlib.suppress(OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        records = json.loads(path.read_text()) if path.is_file() else {}
        records[_build_key(model_name, device_type, batch_size)] = round(seconds, 2)
        write_text_atomic(path, json.dumps(records, indent=1, sort_keys=True))
