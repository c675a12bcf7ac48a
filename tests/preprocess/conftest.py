"""Image files shared by the preprocess tests: real photographs and awkward shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures.images import textured_image, write_cmyk_jpeg, write_image

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = ("resnet50", "mobilenet_v1")

# (height, width): landscape, portrait, exactly 256 on a side, both sides 256, smaller than
# the crop (upscaled), odd sizes, a thin strip.
SHAPES = [(375, 500), (500, 375), (256, 300), (300, 256), (256, 256), (224, 224), (150, 100),
          (97, 223), (333, 517), (31, 401)]  # fmt: skip


def _photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {n: getattr(skimage.data, n)() for n in ("chelsea", "coffee", "astronaut", "rocket")}


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> list[Path]:
    """Photographs as JPEG and PNG, generated shapes, grayscale, RGBA PNG, CMYK JPEG."""
    import skimage.data

    folder = tmp_path_factory.mktemp("images")
    files = []
    for name, rgb in _photos().items():
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        files.append(write_image(folder / f"{name}.jpg", bgr))
        files.append(write_image(folder / f"{name}.png", bgr))
    files.append(write_image(folder / "camera_gray.jpg", skimage.data.camera()))
    files.append(write_image(folder / "camera_gray.png", skimage.data.camera()))
    for k, (h, w) in enumerate(SHAPES):
        files.append(write_image(folder / f"gen_{h}x{w}.JPEG", textured_image(h, w, seed=k)))
    files.append(write_image(folder / "gray_gen.JPEG", textured_image(280, 390, 3, channels=1)))
    rgba = np.dstack([textured_image(300, 420, 4), textured_image(300, 420, 5, channels=1)])
    files.append(write_image(folder / "rgba.png", rgba))
    files.append(write_cmyk_jpeg(folder / "cmyk.jpg", _photos()["chelsea"]))
    return files


@pytest.fixture
def run_preprocess_cli():
    """Run ``python -m preprocess`` in a subprocess from the repo root."""
    import subprocess

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "preprocess", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )

    return run
