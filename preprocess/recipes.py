"""MLPerf's image preprocessing, split at the point where the data is still uint8.

The reference is MLPerf inference's ``vision/classification_and_detection/python/dataset.py``
(``pre_process_vgg`` / ``pre_process_mobilenet``, with its ``resize_with_aspectratio`` and
``center_crop``). Its steps, as numbered throughout this package:

1. decode the file with ``cv2.imread`` (uint8 BGR; here ``cv2.imdecode`` of the file's
   bytes, which gives the same pixels: see ``decode``);
2. convert BGR to RGB and resize the short side to 256 (the model's interpolation);
3. centre-crop 224 x 224;
4. normalize in float32 (vgg: subtract the means; mobilenet: scale to [-1, 1]).

``crop_uint8`` does steps 1-3: its output is what the cache stores. ``normalize`` does step
4 at load time. Together they equal MLPerf's functions bit for bit, because every float32
operation is done in the same order, with the same operand types, as the reference.
"""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np

from core.errors import UserError
from core.profiles import CROP_SIZE, SHORT_SIDE, VGG_MEANS_RGB, ModelProfile, as_profile

INTERPOLATION_FLAGS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def resized_size(height: int, width: int) -> tuple[int, int]:
    """cv2's ``(width, height)`` with the short side at 256: Python ``int()`` truncation on a
    float quotient, exactly as MLPerf computes it."""
    if height > width:
        return SHORT_SIDE, int(SHORT_SIDE * height / width)
    return int(SHORT_SIDE * width / height), SHORT_SIDE


def center_crop(img: np.ndarray) -> np.ndarray:
    """MLPerf's centre crop: ``int((d - 224) / 2)`` to ``int((d + 224) / 2)`` per axis."""
    height, width = img.shape[:2]
    top, bottom = int((height - CROP_SIZE) / 2), int((height + CROP_SIZE) / 2)
    left, right = int((width - CROP_SIZE) / 2), int((width + CROP_SIZE) / 2)
    return img[top:bottom, left:right]


def crop_bgr_image(bgr: np.ndarray, profile: ModelProfile) -> np.ndarray:
    """Steps 2-3 on an image as ``cv2.imread`` returns it: uint8 RGB (224, 224, 3)."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    size = resized_size(*rgb.shape[:2])
    return center_crop(
        cv2.resize(rgb, size, interpolation=INTERPOLATION_FLAGS[profile.interpolation])
    )


def unreadable_reason(path: str) -> str | None:
    """Why ``path`` cannot be an image without decoding it, or None if it may be one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"cannot stat: {err.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file"
    return None


def decode(path: str) -> tuple[np.ndarray | None, str | None]:
    """(BGR image as ``cv2.imread`` returns it, None) or (None, why it is unreadable)."""
    reason = unreadable_reason(path)
    if reason is not None:
        return None, reason
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return None, f"cannot read: {err.strerror or err}"
    try:
        # Not cv2.imread(path): OpenCV crashes the process (SIGSEGV) on a str path that is
        # not valid UTF-8. imdecode with IMREAD_COLOR (imread's default flags) runs the same
        # decoders, EXIF rotation included, and gives the same pixels (tests compare them).
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    return (bgr, None) if bgr is not None else (None, "OpenCV cannot decode it")


def crop_uint8(path: str | os.PathLike, profile: ModelProfile | str) -> np.ndarray:
    """Steps 1-3 for one file: the uint8 RGB crop the cache stores."""
    bgr, reason = decode(os.fspath(path))
    if bgr is None:
        raise UserError(f"cannot read image {os.fspath(path)}: {reason}")
    return crop_bgr_image(bgr, as_profile(profile))


def normalize(u8_batch: np.ndarray, profile: ModelProfile | str) -> np.ndarray:
    """Step 4 on uint8 crops of any leading shape (usually (N, 224, 224, 3)): float32 out.

    The operations mirror the reference in-place float32 code: ``img -= means`` with a
    float32 means array (vgg); ``img /= 255.0; img -= 0.5; img *= 2`` (mobilenet), where the
    Python scalars act as float32 operands. A float64 means list would round differently.
    """
    profile = as_profile(profile)
    recipe = profile.recipe
    out = np.array(u8_batch, dtype=np.float32)  # always a fresh, writable array
    if recipe == "vgg":
        out -= np.array(VGG_MEANS_RGB, dtype=np.float32)
    elif recipe == "mobilenet":
        out /= np.float32(255.0)
        out -= np.float32(0.5)
        out *= np.float32(2)
    else:
        raise ValueError(f"unknown preprocessing recipe {recipe!r} for model {profile.name!r}")
    return out


def mlperf_preprocess(path: str | os.PathLike, profile: ModelProfile | str) -> np.ndarray:
    """MLPerf's float32 (224, 224, 3) RGB input for one image file, bit for bit."""
    profile = as_profile(profile)
    return normalize(crop_uint8(path, profile), profile)


def recipe_parameters(profile: ModelProfile) -> dict:
    """Everything that determines a model's crops and floats, for manifests and fingerprints."""
    params = {
        "model": profile.name,
        "recipe": profile.recipe,
        "interpolation": profile.interpolation,
        "short_side": SHORT_SIDE,
        "crop_size": CROP_SIZE,
        # Unchanged since decode moved to cv2.imdecode (same pixels): a new value would
        # re-crop every existing cache for nothing.
        "decoder": "cv2.imread(IMREAD_COLOR) then COLOR_BGR2RGB",
    }
    if profile.recipe == "vgg":
        params["means_rgb"] = list(VGG_MEANS_RGB)
    return params
