"""What the evaluation loop needs from an inference engine: uint8 NHWC crops in, float32
logits ``(N, num_classes)`` out, top-5 labels through ``submit``/``collect``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from core.errors import UserError
from core.profiles import CROP_SIZE, ModelProfile
from eval.metrics import TOP_K, labels_from_classes, top_k_classes


class Backend(ABC):
    """What the evaluation loop needs from an inference engine."""

    #: Short name recorded in results.json ("torch", "tf", ...).
    name: str = "backend"
    #: How the model is executed within the backend (e.g. "eager"); None when not applicable.
    engine: str | None = None

    def __init__(self, profile: ModelProfile, device: str):
        self.profile = profile
        self.device = device
        self._label_offset = profile.label_offset

    @property
    def label_offset(self) -> int:
        """label = argmax - label_offset: 1 for a 1001-class head with background, else 0."""
        return self._label_offset

    @abstractmethod
    def logits(self, u8_nhwc: np.ndarray) -> np.ndarray:
        """Return float32 logits ``(N, num_classes)`` for uint8 crops ``(N, 224, 224, 3)``."""

    #: The evaluation loop hands ``collect`` this many pending batches at a time.
    collect_every: int = 1
    #: Threads reading (and digest-checking) crops from the cache ahead of the backend.
    reader_threads: int = 1

    def submit(self, u8_nhwc: np.ndarray):
        """Start one batch (its buffer may be refilled once this returns); ``collect`` turns
        the handles into top-5 labels. By default the handle already is those labels."""
        logits = self.logits(u8_nhwc)
        return labels_from_classes(top_k_classes(logits, TOP_K), self.label_offset)

    def collect(self, handles: list) -> list[np.ndarray]:
        """The int64 top-5 labels of each submitted batch, in order."""
        return list(handles)

    def allocate_batch(self, batch_size: int) -> np.ndarray:
        """A writable uint8 ``(batch_size, 224, 224, 3)`` buffer the reader fills; backends
        override it to hand out memory they transfer fast (pinned memory)."""
        return np.empty((batch_size, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)

    def describe(self) -> dict:
        """Fields for results.json that identify what ran (weights hash, device name)."""
        return {}

    def close(self) -> None:
        """Free sessions or device memory early; the backend is unusable afterwards."""
        return None  # nothing to free by default

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_logits_shape(logits, batch: int, num_classes: int, what: str) -> None:
    """UserError unless the logits (a numpy array or a torch tensor) are (batch, classes)."""
    if tuple(logits.shape) != (batch, num_classes):
        raise UserError(
            f"{what} returned logits of shape {tuple(logits.shape)}, "
            f"expected ({batch}, {num_classes})"
        )
