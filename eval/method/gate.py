"""MLPerf's accuracy gate for a modified model, decided on whole numbers of images.

A modified model passes when its top-1 is at least the model's share of the fp32 run's on
the same images (ResNet-50 0.99, MobileNet-v1 0.98): ``correct * 100 >= fp32_correct * 99``
in integers, so no rounding can move a model across the line. On all 50,000 validation
images MLPerf's submission checker threshold (``76.46 * 0.99``, ``71.68 * 0.98``) is
checked too, unrounded. Without a usable fp32 run (none, or one whose top-1 is 0 %) the
verdict is unknown, never a pass.
"""

from __future__ import annotations

import math
from fractions import Fraction

from core.profiles import ModelProfile

# MLPerf's accuracy figures are for the whole ImageNet validation set.
MLPERF_IMAGES = 50_000
# Digits of the printed ratio: cut (never rounded) to this many, so it never shows a
# failing ratio as the gate itself.
RATIO_DIGITS = 6


def required_ratio(profile: ModelProfile) -> Fraction:
    """The share of fp32's top-1 the model must keep, exactly (0.99 is 99/100)."""
    return Fraction(str(profile.gate_ratio))


def mlperf_threshold(profile: ModelProfile) -> Fraction:
    """MLPerf's submission checker threshold in percent, exactly: 76.46 * 0.99 = 75.6954."""
    return Fraction(str(profile.gate_reference_top1)) * required_ratio(profile)


def images_needed(profile: ModelProfile, fp32_correct: int) -> int:
    """The fewest correct images that pass against ``fp32_correct``."""
    ratio = required_ratio(profile)
    return math.ceil(Fraction(fp32_correct) * ratio)


def mlperf_gate(profile: ModelProfile, correct: int, fp32_correct: int | None, images: int) -> dict:
    """The verdict of ``correct`` of ``images`` right against fp32's ``fp32_correct`` on the
    same images (None: no fp32 run). ``passes`` is True, False, or None when unknown."""
    ratio = required_ratio(profile)
    gate: dict = {
        "required_ratio": float(ratio),
        "images": images,
        "correct": correct,
        "fp32_correct": fp32_correct,
        "top1": _percent(correct, images),
        "fp32_top1": None if fp32_correct is None else _percent(fp32_correct, images),
        "ratio": None,
        "ratio_exact": None,
        "passes": None,
        "needed": None,
        "unknown": None,
    }
    if fp32_correct is None:
        gate["unknown"] = "no fp32 run of the same model, weights and images to compare with"
    elif fp32_correct == 0:
        gate["unknown"] = "the fp32 run's top-1 is 0 %"
    else:
        gate["ratio"] = correct / fp32_correct
        gate["ratio_exact"] = f"{correct}/{fp32_correct}"
        gate["passes"] = correct * ratio.denominator >= fp32_correct * ratio.numerator
        gate["needed"] = images_needed(profile, fp32_correct)
    if images == MLPERF_IMAGES:
        threshold = mlperf_threshold(profile)
        gate["mlperf_threshold_top1"] = float(threshold)
        gate["passes_mlperf_threshold"] = Fraction(100 * correct, images) >= threshold
    return gate


def _percent(correct: int, images: int) -> float | None:
    return 100.0 * correct / images if images else None


def cut_decimals(value: Fraction, digits: int = RATIO_DIGITS) -> str:
    """``value`` >= 0 with ``digits`` decimals, cut toward zero (0.9899997 -> 0.989999), so
    a value below a gate with fewer decimals never prints as the gate."""
    scaled = math.floor(value * 10**digits)
    return f"{scaled // 10**digits}.{scaled % 10**digits:0{digits}d}"


def gate_line(gate: dict) -> str:
    """The verdict as one line a person reads at a glance, with the counts behind it."""
    required = f"needs >= {gate['required_ratio']:g} x fp32"
    if gate["passes"] is None:
        line = f"unknown: {gate['unknown']} ({required})"
    else:
        correct, fp32_correct = gate["correct"], gate["fp32_correct"]
        ratio = cut_decimals(Fraction(correct, fp32_correct))
        line = (
            f"{'PASS' if gate['passes'] else 'FAIL'}  {gate['top1']:.3f} % = {ratio} x fp32 "
            f"{gate['fp32_top1']:.3f} % ({correct:,} vs {fp32_correct:,} images right; "
            f"{required}: {gate['needed']:,} right)"
        )
    if "passes_mlperf_threshold" in gate:
        mark = "passes" if gate["passes_mlperf_threshold"] else "misses"
        # repr: the shortest decimal of the threshold (75.6954), never rounded shorter
        line += f"; {mark} MLPerf's {gate['mlperf_threshold_top1']!r} %"
    return line
