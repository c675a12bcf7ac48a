"""Top-1 / top-5 accuracy over logits of 1001 or 1000 classes, with the label offset.

An ImageNet label (0..999) is ``class index - label_offset``: 1 for MLPerf's 1001-class
graphs (class 0 is "background"), 0 for a 1000-class one; the offset is always passed in,
never assumed here. Ties rank to the lower class index, as TF's ``ArgMax`` and
``np.argmax`` do for the top-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 5


def top_k_classes(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """The ``k`` best class indices per row, best first, int64 ``(N, k)``. A stable sort of
    the negated logits keeps ties in index order: the first column is ``np.argmax``'s."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, classes), got shape {logits.shape}")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k={k} is outside 1..{logits.shape[1]} classes")
    order = np.argsort(-logits, axis=1, kind="stable")
    return order[:, :k].astype(np.int64, copy=False)


def labels_from_classes(classes: np.ndarray, label_offset: int) -> np.ndarray:
    """Map class indices to ImageNet labels: ``class - label_offset`` (int64)."""
    return np.asarray(classes, dtype=np.int64) - np.int64(label_offset)


@dataclass
class AccuracyCounter:
    """Running top-1 / top-5 counts over batches of predicted labels."""

    images: int = 0
    correct_top1: int = 0
    correct_top5: int = 0

    def update(self, top_labels: np.ndarray, labels: np.ndarray) -> None:
        """Count one batch: ``top_labels`` (N, k) best first, ``labels`` (N,)."""
        top_labels = np.asarray(top_labels)
        labels = np.asarray(labels, dtype=np.int64)
        if top_labels.ndim != 2 or top_labels.shape[0] != labels.shape[0]:
            raise ValueError(f"top_labels {top_labels.shape} does not match labels {labels.shape}")
        hits = top_labels == labels[:, None]
        self.images += int(labels.shape[0])
        self.correct_top1 += int(hits[:, 0].sum())
        self.correct_top5 += int(hits[:, :TOP_K].any(axis=1).sum())

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent (0.0 before any image)."""
        return percent(self.correct_top1, self.images)

    @property
    def top5(self) -> float:
        """Top-5 accuracy in percent (0.0 before any image)."""
        return percent(self.correct_top5, self.images)


def percent(count: int, total: int) -> float:
    return 100.0 * count / total if total else 0.0
