"""The on-disk cache: one model per folder, uint8 crops in a memory-mappable ``.npy``.

Layout of a finished cache::

    images.npy     uint8 (N, 224, 224, 3) RGB crops (MLPerf steps 1-3)
    labels.npy     int64 (N,)
    files.txt      N relative file names, in listing order
    manifest.json  written last; ``complete: true`` only once the three files above are final

While a build runs, ``images.partial.npy`` and ``journal.txt`` (see ``build.py``) hold the
work so far, so a killed build resumes instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import write_text_atomic
from core.profiles import CROP_SIZE, get_profile

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMAGES_NAME = "images.npy"
LABELS_NAME = "labels.npy"
FILES_NAME = "files.txt"
MANIFEST_NAME = "manifest.json"
PARTIAL_IMAGES_NAME = "images.partial.npy"
JOURNAL_NAME = "journal.txt"
FINAL_NAMES = (MANIFEST_NAME, IMAGES_NAME, LABELS_NAME, FILES_NAME)  # manifest first
CROP_SHAPE = (CROP_SIZE, CROP_SIZE, 3)


def config_key(config: dict) -> str:
    """sha256 of a JSON-able dict, independent of key order."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def cache_fingerprint(config: dict, skipped: list[str]) -> str:
    """Changes whenever the cached crops could: build config (recipe, OpenCV, listing,
    limit, data dir) or the set of files left out as unreadable."""
    return config_key({"config": config, "skipped": sorted(skipped)})


def read_manifest(cache_dir: Path) -> dict | None:
    """The manifest as a dict, or None when it is absent or unreadable."""
    try:
        return json.loads((cache_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def write_manifest(cache_dir: Path, manifest: dict) -> None:
    write_text_atomic(cache_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


@dataclass
class PreprocessedCache:
    """A finished cache opened read-only. ``images`` is a memmap: slicing reads from disk."""

    cache_dir: Path
    model: str
    images: np.ndarray  # uint8 (N, 224, 224, 3), read-only memmap
    labels: np.ndarray  # int64 (N,)
    files: list[str]
    manifest: dict = field(repr=False)
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.files)

    def normalized(self, start: int, stop: int) -> np.ndarray:
        """MLPerf's float32 inputs for images ``start:stop`` (NHWC)."""
        from preprocess.recipes import normalize  # keeps cv2 out of load-only imports

        return normalize(self.images[start:stop], self.model)


def load_cache(cache_dir: str | os.PathLike, model: str) -> PreprocessedCache:
    """Open a finished cache for ``model``; UserError if it is missing, incomplete or foreign."""
    cache_dir = Path(cache_dir)
    get_profile(model)  # ValueError for an unknown model name
    rerun = f"run `python -m preprocess --model {model} --cache-dir {cache_dir} ...` first"
    if not cache_dir.is_dir():
        raise UserError(f"no preprocessed cache at {cache_dir}: {rerun}")
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise UserError(f"{cache_dir} holds no readable {MANIFEST_NAME}: {rerun}")
    built_for = manifest.get("config", {}).get("recipe", {}).get("model")
    if built_for != model:
        raise UserError(f"the cache at {cache_dir} was built for {built_for}, not {model}")
    count = manifest.get("count")
    if not manifest.get("complete"):
        done = manifest.get("done", 0)
        raise UserError(
            f"the cache at {cache_dir} is incomplete ({done} of {count} images done): "
            f"rerun the same preprocess command to finish it"
        )
    try:
        images = np.load(cache_dir / IMAGES_NAME, mmap_mode="r")
        labels = np.load(cache_dir / LABELS_NAME)
        files = (cache_dir / FILES_NAME).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        raise UserError(f"the cache at {cache_dir} is damaged ({err}): {rerun}") from None
    expected = (count, *CROP_SHAPE)
    if (
        images.shape != expected
        or images.dtype != np.uint8
        or labels.shape != (count,)
        or labels.dtype != np.int64
        or len(files) != count
    ):
        raise UserError(
            f"the cache at {cache_dir} does not match its manifest ({count} images): {rerun}"
        )
    _warn_if_opencv_changed(manifest)
    return PreprocessedCache(
        cache_dir=cache_dir,
        model=model,
        images=images,
        labels=labels,
        files=files,
        manifest=manifest,
        fingerprint=manifest["fingerprint"],
    )


def _warn_if_opencv_changed(manifest: dict) -> None:
    try:
        import cv2
    except ImportError:  # loading a cache does not need OpenCV
        return
    built_with = manifest.get("config", {}).get("opencv_version")
    if built_with != cv2.__version__:
        log.warning(
            "cache was built with OpenCV %s but %s is installed: rerun preprocess to refresh it",
            built_with,
            cv2.__version__,
        )
