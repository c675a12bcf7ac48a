"""TF-exact SAME padding: the PyTorch modules against tf.nn on odd and even sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convert.models.padding import MaxPool2dSame, TFSamePad2d, tf_same_pads

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),
        (225, 3, 2, (1, 1)),
        (112, 3, 2, (0, 1)),
        (7, 3, 1, (1, 1)),
        (224, 1, 2, (0, 0)),
        (224, 7, 2, (2, 3)),
    ],
)
def test_tf_same_pads_split(size, kernel, stride, expected):
    assert tf_same_pads(size, kernel, stride) == expected


@pytest.mark.parametrize("size", [7, 8, 15, 16])
@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (1, 2), (7, 2)])
def test_same_conv_matches_tf(size, kernel, stride):
    gen = torch.Generator().manual_seed(size * 10 + kernel + stride)
    x = torch.randn(2, 3, size, size + 1, generator=gen)  # odd and even at once
    w = torch.randn(4, 3, kernel, kernel, generator=gen)
    ours = F.conv2d(TFSamePad2d(kernel, stride)(x), w, stride=stride)
    ref = tf.nn.conv2d(_nhwc(x), w.permute(2, 3, 1, 0).numpy(), stride, "SAME").numpy()
    assert ours.shape == torch.Size(np.array(ref.shape)[[0, 3, 1, 2]].tolist())
    np.testing.assert_allclose(_nhwc(ours), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("size", [111, 112, 8, 9])
def test_maxpool_same_matches_tf_and_differs_from_symmetric(size):
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(2, 5, size, size, generator=gen) - 3.0  # negative: padding must be -inf
    ours = MaxPool2dSame(3, 2)(x)
    ref = tf.nn.max_pool2d(_nhwc(x), 3, 2, "SAME").numpy()
    np.testing.assert_array_equal(_nhwc(ours), ref)
    if size % 2 == 0:  # PyTorch's symmetric padding=1 takes other windows on even sizes
        symmetric = torch.nn.MaxPool2d(3, 2, padding=1)(x)
        assert not np.array_equal(_nhwc(symmetric), ref)


@pytest.mark.parametrize("size", [224, 223])
def test_resnet_stem_symmetric_padding_equals_tf_explicit_pad(size):
    """TF pads 3/3 then runs VALID: PyTorch's padding=3 is the same for any input size."""
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(1, 3, size, size, generator=gen)
    w = torch.randn(8, 3, 7, 7, generator=gen)
    ours = F.conv2d(x, w, stride=2, padding=3)
    padded = tf.pad(_nhwc(x), [[0, 0], [3, 3], [3, 3], [0, 0]])
    ref = tf.nn.conv2d(padded, w.permute(2, 3, 1, 0).numpy(), 2, "VALID").numpy()
    np.testing.assert_allclose(_nhwc(ours), ref, atol=1e-4, rtol=1e-5)
