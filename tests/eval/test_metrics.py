import numpy as np
import pytest

from eval.metrics import (
    AccuracyCounter,
    labels_from_classes,
    percent,
    top_k_classes,
)
from tests.eval.fakes import accuracy


def one_hot_logits(rows: list[list[int]], classes: int = 1001) -> np.ndarray:
    """Logits where row r ranks rows[r][0] first, rows[r][1] second, ..."""
    logits = np.zeros((len(rows), classes), dtype=np.float32)
    for r, ranked in enumerate(rows):
        for rank, cls in enumerate(ranked):
            logits[r, cls] = 10.0 - rank
    return logits


def test_top_k_orders_best_first():
    logits = one_hot_logits([[7, 3, 900, 1, 2], [1000, 0, 5, 6, 4]])
    np.testing.assert_array_equal(top_k_classes(logits), [[7, 3, 900, 1, 2], [1000, 0, 5, 6, 4]])
    assert top_k_classes(logits).dtype == np.int64


def test_ties_go_to_lower_class_index_like_argmax():
    logits = np.zeros((2, 1001), dtype=np.float32)
    logits[0, [9, 4, 600]] = 3.0  # three-way tie for first
    logits[1] = 1.0  # everything ties
    top = top_k_classes(logits)
    np.testing.assert_array_equal(top[:, 0], np.argmax(logits, axis=1))
    np.testing.assert_array_equal(top[0, :3], [4, 9, 600])
    np.testing.assert_array_equal(top[1], [0, 1, 2, 3, 4])


def test_offset_one_maps_class_to_label():
    # Class 1 is ImageNet label 0; class 0 ("background") becomes -1 and never matches.
    np.testing.assert_array_equal(labels_from_classes([1, 1000, 0], 1), [0, 999, -1])
    np.testing.assert_array_equal(labels_from_classes([1, 1000, 0], 0), [1, 1000, 0])


def test_accuracy_uses_the_given_offset():
    logits = one_hot_logits([[11, 1, 2, 3, 4], [501, 2, 3, 4, 5], [0, 1, 2, 3, 4]])
    labels = np.array([10, 500, 3])
    with_offset = accuracy(logits, labels, label_offset=1)
    # image 0: class 11 -> label 10 (hit); image 1: 501 -> 500 (hit);
    # image 2: classes 0..4 -> labels -1..3: top-1 miss, label 3 is 5th -> top-5 hit.
    assert (with_offset.correct_top1, with_offset.correct_top5) == (2, 3)
    without = accuracy(logits, labels, label_offset=0)
    # Offset 0: labels 11, 501, 0 vs 10, 500, 3; image 2's top-5 holds label 3.
    assert (without.correct_top1, without.correct_top5) == (0, 1)


def test_top5_boundary_fifth_counts_sixth_does_not():
    ranked = [100, 101, 102, 103, 104, 105]  # class 104 is 5th, 105 is 6th
    logits = one_hot_logits([ranked, ranked])
    counter = accuracy(logits, np.array([103, 104]), label_offset=1)  # labels of 104, 105
    assert counter.correct_top1 == 0
    assert counter.correct_top5 == 1


def test_tie_at_top5_boundary_keeps_lower_index():
    logits = np.zeros((2, 1001), dtype=np.float32)
    logits[:, [10, 20, 30, 40]] = 5.0
    logits[:, [60, 50]] = 1.0  # tie for 5th place: class 50 wins it, 60 is 6th
    counter = accuracy(logits, np.array([49, 59]), label_offset=1)
    assert counter.correct_top5 == 1
    assert counter.images == 2


def test_counter_accumulates_batches_and_percent():
    counter = AccuracyCounter()
    counter.update(np.array([[1, 2, 3, 4, 5]]), np.array([1]))
    counter.update(np.array([[9, 8, 7, 6, 5], [0, 0, 0, 0, 0]]), np.array([5, 3]))
    assert (counter.images, counter.correct_top1, counter.correct_top5) == (3, 1, 2)
    assert counter.top1 == pytest.approx(100 / 3)
    assert counter.top5 == pytest.approx(200 / 3)
    assert AccuracyCounter().top1 == 0.0
    assert percent(1, 4) == 25.0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="2-D"):
        top_k_classes(np.zeros(1001))
    with pytest.raises(ValueError, match="does not match"):
        AccuracyCounter().update(np.zeros((2, 5)), np.zeros(3))
