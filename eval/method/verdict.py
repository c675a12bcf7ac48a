"""A modified model's predictions judged against the fp32 run's on the same labelled images:
both top-1s, how many predictions are equal, MLPerf's gate and the flips. One function for
an evaluation and for ``python -m eval compare --labels`` (predictions from any harness).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError
from core.profiles import ModelProfile
from eval.method.flips import flips
from eval.method.gate import mlperf_gate


@dataclass
class Verdict:
    """What ``judge_predictions`` found; ``flips_csv`` is flips.csv's text."""

    images: int
    fp32_correct: int
    correct: int
    equal_predictions: int
    gate: dict
    flips: dict
    flips_csv: str = field(repr=False)

    @property
    def equal_share(self) -> float | None:
        return self.equal_predictions / self.images if self.images else None

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "fp32": {"correct": self.fp32_correct, "top1": self.gate["fp32_top1"]},
            "method": {"correct": self.correct, "top1": self.gate["top1"]},
            "equal_predictions": self.equal_predictions,
            "equal_share": self.equal_share,
            "gate": self.gate,
            "flips": self.flips,
        }


def judge_predictions(
    profile: ModelProfile,
    labels: np.ndarray,
    fp32: np.ndarray,
    method: np.ndarray,
    files: list[str] | None = None,
) -> Verdict:
    """``method``'s predicted labels against ``fp32``'s, both for the images ``labels`` holds
    the true labels of (1-D, same length); ``files`` names them in flips.csv."""
    labels, fp32, method = (np.asarray(a) for a in (labels, fp32, method))
    if not all(a.ndim == 1 and np.issubdtype(a.dtype, np.integer) for a in (labels, fp32, method)):
        raise UserError("labels and predictions must be 1-D integer arrays, one per image")
    if not len(labels) == len(fp32) == len(method):
        raise UserError(
            f"the labels and the two predictions cover different numbers of images "
            f"({len(labels)}, {len(fp32)} and {len(method)})"
        )
    names = files if files is not None else [str(i) for i in range(len(labels))]
    fp32_correct = int((fp32 == labels).sum())
    correct = int((method == labels).sum())
    summary, text = flips(names, labels, fp32, method)
    return Verdict(
        images=len(labels),
        fp32_correct=fp32_correct,
        correct=correct,
        equal_predictions=int((fp32 == method).sum()),
        gate=mlperf_gate(profile, correct, fp32_correct, len(labels)),
        flips=summary,
        flips_csv=text,
    )
