"""An independent, straight-line transcription of MLPerf's preprocessing (MLPERF_FACTS.md).

Deliberately does not import the ``preprocess`` package: the tests compare the package
against this, so a shared bug cannot hide. Steps are numbered as in ``preprocess/recipes.py``.
"""

from __future__ import annotations

import cv2
import numpy as np


def reference_crop(path, model: str) -> np.ndarray:
    """Steps 1-3: uint8 RGB centre crop, as MLPerf computes it."""
    img = cv2.imread(str(path))  # default flags: BGR, 3 channels
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    # resize_with_aspectratio(out 224x224, scale 87.5)
    height, width, _ = img.shape
    new_height = int(100.0 * 224 / 87.5)
    new_width = int(100.0 * 224 / 87.5)
    if height > width:
        w = new_width
        h = int(new_height * height / width)
    else:
        h = new_height
        w = int(new_width * width / height)
    interpolation = cv2.INTER_AREA if model == "resnet50" else cv2.INTER_LINEAR
    img = cv2.resize(img, (w, h), interpolation=interpolation)
    # center_crop to 224x224
    height, width, _ = img.shape
    left = int((width - 224) / 2)
    right = int((width + 224) / 2)
    top = int((height - 224) / 2)
    bottom = int((height + 224) / 2)
    return img[top:bottom, left:right]


def reference_floats(crop: np.ndarray, model: str) -> np.ndarray:
    """Step 4 on one uint8 crop, with the reference's in-place float32 operations."""
    img = np.asarray(crop, dtype="float32").copy()
    if model == "resnet50":
        means = np.array([123.68, 116.78, 103.94], dtype=np.float32)
        img -= means  # float32 array minus float32 array: float32 arithmetic
    else:
        img /= 255.0  # in place on float32: the Python float acts as a float32
        img -= 0.5
        img *= 2
    return img


def reference_preprocess(path, model: str) -> np.ndarray:
    return reference_floats(reference_crop(path, model), model)
