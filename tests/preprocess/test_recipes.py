"""preprocess.mlperf_preprocess / normalize against the independent MLPerf transcription."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.errors import UserError
from core.profiles import PROFILES
from preprocess import crop_uint8, mlperf_preprocess, normalize
from preprocess.recipes import center_crop, resized_size
from tests.preprocess.conftest import MODELS
from tests.preprocess.mlperf_reference import (
    reference_crop,
    reference_floats,
    reference_preprocess,
)


@pytest.mark.parametrize("model", MODELS)
def test_mlperf_preprocess_is_bit_identical_to_reference(image_files, model):
    assert len(image_files) >= 20
    for path in image_files:
        got = mlperf_preprocess(path, model)
        want = reference_preprocess(path, model)
        assert got.dtype == np.float32 and got.shape == (224, 224, 3), path.name
        assert np.array_equal(got, want), f"{path.name} differs for {model}"


@pytest.mark.parametrize("model", MODELS)
def test_normalize_batch_equals_per_image_reference(image_files, model):
    crops = np.stack([crop_uint8(p, model) for p in image_files])
    assert crops.dtype == np.uint8 and crops.shape == (len(image_files), 224, 224, 3)
    floats = normalize(crops, model)
    assert floats.dtype == np.float32 and floats.shape == crops.shape
    for i, path in enumerate(image_files):
        assert np.array_equal(crops[i], reference_crop(path, model)), path.name
        assert np.array_equal(floats[i], reference_preprocess(path, model)), path.name


def test_normalize_covers_every_uint8_value_exactly():
    every_value = np.repeat(np.arange(256, dtype=np.uint8), 3).reshape(1, 16, 16, 3)
    for model in MODELS:
        assert np.array_equal(
            normalize(every_value, model)[0], reference_floats(every_value[0], model)
        )
    vgg = normalize(every_value, "resnet50")[0]
    assert vgg[0, 0].tolist() == pytest.approx([-123.68, -116.78, -103.94], abs=1e-4)
    mobile = normalize(every_value, "mobilenet_v1")[0]
    assert mobile.min() == -1.0 and mobile.max() == 1.0


@pytest.mark.parametrize("model", MODELS)
def test_a_profile_and_its_name_give_the_same_arrays(image_files, model):
    profile = PROFILES[model]
    crop = crop_uint8(image_files[0], profile)
    assert np.array_equal(crop, crop_uint8(image_files[0], model))
    assert np.array_equal(normalize(crop, profile), normalize(crop, model))
    assert np.array_equal(mlperf_preprocess(image_files[0], profile), normalize(crop, model))


def test_normalize_does_not_modify_its_input():
    crops = np.full((2, 224, 224, 3), 200, dtype=np.uint8)
    normalize(crops, "resnet50")
    assert (crops == 200).all()


def test_details_the_comparison_would_catch(image_files):
    """The tests are sharp enough: each plausible slip changes the result."""
    photo = next(p for p in image_files if p.name == "chelsea.jpg")
    # Swapped interpolation flags.
    assert not np.array_equal(
        reference_crop(photo, "resnet50"), reference_crop(photo, "mobilenet_v1")
    )
    values = np.arange(256, dtype=np.float32)
    # float64 means (a Python list) instead of the reference's float32 means array.
    as_float64 = (np.arange(256) - 123.68).astype(np.float32)
    assert not np.array_equal(values - np.float32(123.68), as_float64)
    # Multiplying by 1/255 instead of dividing by 255.
    divided = values.copy()
    divided /= 255.0
    assert not np.array_equal(divided, values * np.float32(1 / 255))
    # One pixel of a different crop offset.
    img = cv2.imread(str(photo))
    shifted = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[1:]
    assert not np.array_equal(center_crop(shifted), reference_crop(photo, "resnet50"))


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        ((375, 500, (341, 256))),
        ((500, 375, (256, 341))),
        ((256, 256, (256, 256))),
        ((100, 150, (384, 256))),
        ((97, 223, (588, 256))),
        ((333, 517, (397, 256))),
        ((517, 333, (256, 397))),
    ],
)
def test_resized_size_truncates_like_python_int(height, width, expected):
    assert resized_size(height, width) == expected


def test_center_crop_offsets():
    img = np.arange(341 * 256).reshape(256, 341)
    crop = center_crop(img)
    assert crop.shape == (224, 224)
    assert crop[0, 0] == img[16, 58]  # int(117/2) = 58 columns, int(32/2) = 16 rows


def test_unreadable_file_is_a_user_error(tmp_path):
    bad = tmp_path / "not_an_image.JPEG"
    bad.write_text("hello")
    with pytest.raises(UserError, match="not_an_image.JPEG"):
        mlperf_preprocess(bad, "resnet50")


def test_unknown_model_is_rejected(image_files):
    with pytest.raises(UserError, match="unknown model"):
        mlperf_preprocess(image_files[0], "vgg16")
