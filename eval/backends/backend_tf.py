"""The original frozen graph, run by TensorFlow on the CPU: the reference backend."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.profiles import CROP_SIZE, ModelProfile
from eval.backends.base import Backend, check_logits_shape
from preprocess.recipes import normalize


class TFBackend(Backend):
    """The original frozen graph, run by TensorFlow on the CPU: the reference."""

    name = "tf"

    def __init__(self, checkpoint, profile: ModelProfile, device: str = "cpu"):
        if device != "cpu":
            raise UserError(f"the tf reference backend runs on the CPU only, not {device!r}")
        super().__init__(profile, device)
        from convert.tf_runner import TFGraphRunner

        self.checkpoint_path = Path(checkpoint)
        self.runner = TFGraphRunner(self.checkpoint_path, profile)
        self._label_offset: int | None = None  # known once the graph has answered

    @property
    def label_offset(self) -> int:
        """From the graph's logits width (1001 classes: 1, 1000 classes: 0)."""
        if self._label_offset is None:
            # No batch has run (a run restored whole from its journal): ask the graph with
            # one blank crop; ``logits`` records the width, or refuses one it cannot use.
            self.logits(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8))
        return self._label_offset

    def logits(self, u8_nhwc: np.ndarray) -> np.ndarray:
        result = np.asarray(self.runner.logits(normalize(u8_nhwc, self.profile)), dtype=np.float32)
        if self._label_offset is None and result.ndim == 2 and result.shape[1] in (1000, 1001):
            self._label_offset = result.shape[1] - 1000
        expected = 1000 + (self._label_offset or 0)
        check_logits_shape(result, len(u8_nhwc), expected, "the frozen graph")
        return result

    def close(self) -> None:
        self.runner.close()

    def describe(self) -> dict:
        return {
            "device_name": "cpu",
            "checkpoint": os.fspath(self.checkpoint_path),
            # The digest of the bytes the runner parsed, not of the file as it is now.
            "checkpoint_sha256": self.runner.source_sha256,
        }
