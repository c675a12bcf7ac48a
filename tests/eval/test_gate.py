"""MLPerf's gate decided on whole numbers of images, and the flips' direction: the same
function through ``eval.method.verdict``, ``python -m eval compare --json`` and an
evaluation's judging step. Each case sits at, one image below or one image above a line.
"""

import json
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from core.cli import run_cli
from core.profiles import get_profile
from eval.compare import main as compare_main
from eval.method.flips import flips
from eval.method.gate import cut_decimals, gate_line, mlperf_gate
from eval.method.prepare import PreparedMethod
from eval.method.reference import Fp32Reference
from eval.method.verdict import judge_predictions

RESNET, MOBILENET = get_profile("resnet50"), get_profile("mobilenet_v1")


def predictions_with(labels: np.ndarray, right: int) -> np.ndarray:
    """Predictions of ``labels`` with exactly the first ``right`` correct."""
    wrong = (labels + 1) % 1000
    return np.where(np.arange(len(labels)) < right, labels, wrong).astype(np.int64)


# (profile, images, fp32 right, method right, passes): 38,200 x 0.99 = 37,818 exactly and
# 35,000 x 0.98 = 34,300 exactly, so each pair is at the line, one below and one above.
RELATIVE_CASES = [
    (RESNET, 40_000, 38_200, 37_818, True),
    (RESNET, 40_000, 38_200, 37_817, False),
    (RESNET, 40_000, 38_200, 37_819, True),
    (MOBILENET, 40_000, 35_000, 34_300, True),
    (MOBILENET, 40_000, 35_000, 34_299, False),
    (MOBILENET, 40_000, 35_000, 34_301, True),
]


@pytest.mark.parametrize(("profile", "images", "fp32", "method", "passes"), RELATIVE_CASES)
def test_the_gate_at_one_below_and_one_above_the_ratio(profile, images, fp32, method, passes):
    gate = mlperf_gate(profile, method, fp32, images)
    assert gate["passes"] is passes
    assert gate["ratio_exact"] == f"{method}/{fp32}" and gate["ratio"] == method / fp32
    assert gate["needed"] == (37_818 if profile is RESNET else 34_300)
    assert gate_line(gate).startswith("PASS" if passes else "FAIL")
    assert "passes_mlperf_threshold" not in gate  # not the whole validation set


def test_a_ratio_a_hair_below_the_line_is_a_fail_that_shows_why():
    """37,817 of 50,000 against fp32's 38,199: 0.9899997..., which six rounded decimals
    would print as 0.990000 and a rounded comparison would pass."""
    gate = mlperf_gate(RESNET, 37_817, 38_199, 50_000)
    assert gate["passes"] is False and gate["needed"] == 37_818
    line = gate_line(gate)
    assert line.startswith("FAIL") and "0.989999 x fp32" in line
    assert "37,817 vs 38,199 images right" in line and "37,818 right" in line


@pytest.mark.parametrize(
    ("profile", "correct", "passes"),
    [(RESNET, 37_848, True), (RESNET, 37_847, False), (MOBILENET, 35_124, True),
     (MOBILENET, 35_123, False)],
)  # fmt: skip
def test_mlperfs_own_threshold_on_all_50000_images_both_sides(profile, correct, passes):
    """76.46 x 0.99 = 75.6954 %: 37,848 right is 75.696 %, 37,847 is 75.694 %; 71.68 x 0.98
    = 70.2464 %: 35,124 is 70.248 %, 35,123 is 70.246 %."""
    gate = mlperf_gate(profile, correct, 40_000, 50_000)
    assert gate["passes_mlperf_threshold"] is passes
    expected = 75.6954 if profile is RESNET else 70.2464
    assert gate["mlperf_threshold_top1"] == expected  # unrounded: the exact product
    mark = "passes" if passes else "misses"
    assert f"; {mark} MLPerf's {expected} %" in gate_line(gate)


def test_a_zero_or_missing_fp32_run_is_unknown_never_a_pass():
    for fp32, why in ((0, "top-1 is 0 %"), (None, "no fp32 run")):
        gate = mlperf_gate(RESNET, 10, fp32, 100)
        assert gate["passes"] is None and gate["ratio"] is None
        assert gate_line(gate).startswith("unknown: ") and why in gate_line(gate)
    # without fp32, MLPerf's own threshold on 50,000 images still says what it can
    gate = mlperf_gate(RESNET, 37_848, None, 50_000)
    assert gate["passes"] is None and gate["passes_mlperf_threshold"] is True


def test_cut_decimals_never_rounds_up():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        value = Fraction(int(rng.integers(0, 10**7)), int(rng.integers(1, 10**7)))
        shown = Fraction(cut_decimals(value))
        assert shown <= value < shown + Fraction(1, 10**6)
    assert cut_decimals(Fraction(99, 100)) == "0.990000"


def test_flips_go_the_right_way():
    labels = np.array([1, 2, 3, 4, 5, 6])
    fp32 = np.array([1, 2, 0, 0, 5, 9])  # right on 0, 1 and 4
    method = np.array([1, 7, 3, 4, 8, 8])  # fixes 2 and 3, breaks 1 and 4, 5 stays wrong
    summary, text = flips([f"f{i}" for i in range(6)], labels, fp32, method)
    assert summary == {"file": "flips.csv", "changed": 5, "fixed": 2, "broken": 2, "net": 0}
    rows = [line.split(",") for line in text.splitlines()[1:]]
    assert {row[0]: row[4] for row in rows} == {
        "f1": "broken", "f2": "fixed", "f3": "fixed", "f4": "broken", "f5": "both wrong",
    }  # fmt: skip
    summary, _ = flips(
        ["a", "b", "c"], np.array([1, 2, 3]), np.array([0, 0, 3]), np.array([1, 2, 0])
    )
    assert (summary["fixed"], summary["broken"], summary["net"]) == (2, 1, 1)


def test_the_verdict_counts_both_top1s_from_the_labels():
    labels = np.arange(10) % 7
    fp32, method = predictions_with(labels, 8), predictions_with(labels, 5)
    verdict = judge_predictions(MOBILENET, labels, fp32, method)
    assert (verdict.fp32_correct, verdict.correct, verdict.images) == (8, 5, 10)
    assert verdict.equal_predictions == 7 and verdict.flips["broken"] == 3
    assert verdict.gate["passes"] is False and verdict.gate["top1"] == 50.0


@pytest.fixture
def compare_json(tmp_path, capsys):
    def run(profile, images: int, fp32: int, method: int) -> dict:
        labels = np.arange(images, dtype=np.int64) % 1000
        np.save(tmp_path / "labels.npy", labels)
        np.save(tmp_path / "fp32.npy", predictions_with(labels, fp32))
        # the method right on the last ``method`` images: flips in both directions
        np.save(tmp_path / "method.npy", predictions_with(labels[::-1], method)[::-1])
        argv = ["compare", str(tmp_path / "fp32.npy"), str(tmp_path / "method.npy"), "--labels",
                str(tmp_path / "labels.npy"), "--model", profile.name, "--json"]  # fmt: skip
        from eval.__main__ import main

        assert run_cli(main, argv) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    return run


@pytest.mark.parametrize(("profile", "images", "fp32", "method", "passes"), RELATIVE_CASES)
def test_compare_json_gives_the_relative_verdict(
    compare_json, profile, images, fp32, method, passes
):
    report = compare_json(profile, images, fp32, method)
    gate = report["gate"]
    assert gate["passes"] is passes and gate["ratio"] == method / fp32
    assert "passes_mlperf_threshold" not in gate
    assert report["fp32"]["correct"] == fp32 and report["method"]["correct"] == method


@pytest.mark.parametrize(("correct", "passes"), [(37_848, True), (37_847, False)])
def test_compare_json_on_50000_images_checks_mlperfs_threshold(compare_json, correct, passes):
    gate = compare_json(RESNET, 50_000, 38_228, correct)["gate"]
    assert gate["passes_mlperf_threshold"] is passes and gate["passes"] is True


def test_compare_json_with_an_fp32_top1_of_zero_is_unknown(compare_json):
    gate = compare_json(RESNET, 200, 0, 150)["gate"]
    assert gate["passes"] is None and gate["ratio"] is None and "0 %" in gate["unknown"]


def test_compare_require_pass_exits_1_unless_pass(tmp_path, capsys):
    labels = np.arange(100, dtype=np.int64)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "a.npy", labels)
    common = [str(tmp_path / "a.npy"), "--labels", str(tmp_path / "labels.npy")]
    for right, code in ((99, 0), (98, 1)):
        np.save(tmp_path / "b.npy", predictions_with(labels, right))
        argv = [common[0], str(tmp_path / "b.npy"), *common[1:], "--model", "resnet50"]
        assert run_cli(compare_main, [*argv, "--require-pass"]) == code
        out = capsys.readouterr().out
        assert ("PASS" if code == 0 else "FAIL") in out and "top-1 B:" in out
    assert run_cli(compare_main, [common[0], str(tmp_path / "b.npy"), "--labels",
                                  common[2]]) == 1  # fmt: skip
    assert "needs --model" in capsys.readouterr().err


def judged(profile, images: int, fp32: int, method: int) -> dict:
    """The gate an evaluation writes, from its judging step (PreparedMethod.judge's
    comparison) on ``images`` labelled images."""
    labels = np.arange(images, dtype=np.int64) % 1000
    cache = SimpleNamespace(labels=labels, files=[f"{i}.JPEG" for i in range(images)])
    reference = Fp32Reference(
        dir="fp32", chosen_by="--reference", images=images, model=profile.name,
        cache_fingerprint="c", weights_sha256="w", predictions_sha256="p",
        predictions=predictions_with(labels, fp32),
    )  # fmt: skip
    method_run = PreparedMethod(profile, None, cache, "cache", reference=reference)
    result = SimpleNamespace(
        images=images, correct_top1=method, predictions=predictions_with(labels, method)
    )
    method_run._compare(result, SimpleNamespace(weights_sha256="w"), out_dir=None)
    assert result.fp32_reference.top1 == 100 * fp32 / images
    return result.mlperf_gate


@pytest.mark.parametrize(("profile", "images", "fp32", "method", "passes"), RELATIVE_CASES)
def test_an_evaluation_judges_the_same_way(profile, images, fp32, method, passes):
    assert judged(profile, images, fp32, method)["passes"] is passes


@pytest.mark.parametrize(("correct", "passes"), [(37_848, True), (37_847, False)])
def test_an_evaluation_on_50000_images_checks_mlperfs_threshold(correct, passes):
    assert judged(RESNET, 50_000, 38_228, correct)["passes_mlperf_threshold"] is passes


def test_an_evaluation_with_an_fp32_top1_of_zero_is_unknown():
    assert judged(RESNET, 300, 0, 200)["passes"] is None
