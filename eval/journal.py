"""The resume journal: a long evaluation killed part-way continues from its last save."""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from core.files import atomic_path


class ResumeJournal:
    """The top-5 labels finished so far, saved atomically every few seconds; a journal
    whose ``key`` (``journal_key``) names another run is ignored, never reused."""

    def __init__(self, path: Path, key: str, every_seconds: float = 20.0):
        self.path, self.key, self.every_seconds = Path(path), key, every_seconds
        self._last_save = time.monotonic()

    def restore(self, top5: np.ndarray, count: int) -> int:
        """Fill ``top5[:done]`` from the journal and return ``done`` (0 when none fits)."""
        try:
            with np.load(self.path) as saved:
                if str(saved["key"]) != self.key or saved["top5"].shape != top5.shape:
                    return 0
                done = min(int(saved["done"]), count)
                restored = saved["top5"][:done]
                if str(saved["digest"]) != _digest(restored):  # damaged since it was saved
                    return 0
                top5[:done] = restored
                return done
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return 0

    def maybe_save(self, top5: np.ndarray, done: int) -> None:
        if time.monotonic() - self._last_save >= self.every_seconds:
            self.save(top5, done)

    def save(self, top5: np.ndarray, done: int) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            digest = np.array(_digest(top5[:done]))
            np.savez(f, key=np.array(self.key), done=np.array(done), top5=top5, digest=digest)
        self._last_save = time.monotonic()


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def loaded_inputs(backend, cache) -> dict:
    """The digests of the model file bytes ``backend`` loaded and the cache's fingerprint."""
    return {
        "source": {k: v for k, v in backend.describe().items() if k.endswith("sha256")},
        "cache": getattr(cache, "fingerprint", None),
    }


def journal_key(backend, cache, count: int, method: str | None = None) -> str:
    """A digest of everything that decides the predictions: model, backend, engine, model
    file digests, cache fingerprint, image count, precision and the method's digest."""
    identity = {
        "model": backend.profile.name,
        "backend": backend.name,
        "engine": backend.engine,
        **loaded_inputs(backend, cache),
        "count": count,
        "precision": getattr(backend, "precision", "fp32"),
        "method": method,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
