"""The quantization study's scores and its per-setting summary over seeds."""

import numpy as np
import pytest

from benchmarks.quantization_study import agreement, parse_args, settings_for, table


def test_agreement_counts_kept_top1_and_measures_logit_sqnr():
    reference = np.array([[3.0, 1.0], [0.0, 2.0], [1.0, 0.0], [0.0, 4.0]])
    noisy = reference + np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    score = agreement(noisy, reference)
    assert score["kept"] == 0.75  # the second image's top-1 moved
    # signal 9+1+4+1+16 = 31, noise 9: 10 log10(31/9)
    assert score["logit_sqnr_db"] == pytest.approx(10 * np.log10(31 / 9), abs=0.01)
    assert agreement(reference, reference) == {"kept": 1.0, "logit_sqnr_db": float("inf")}


def test_table_averages_each_setting_over_seeds_and_lists_errors():
    row = {"tool": "t", "scheme": "int8", "techniques": "x", "method": "m"}
    rows = [
        {**row, "seed": 0, "kept": 0.8, "logit_sqnr_db": 20.0},
        {**row, "seed": 1, "kept": 0.9, "logit_sqnr_db": 22.0},
        {"tool": "onnxruntime", "seed": 1, "method": "Entropy", "error": "boom"},
    ]
    text = table(rows, images=10, seeds=[0, 1])
    assert " 85.0 %  21.0 dB                (80.0/20.0 90.0/22.0)" in text
    timed = [{**r, "weight_bits_mean": 5.0, "quantize_seconds": 10 * (1 + r["seed"])} for r in rows]
    assert " 85.0 %  21.0 dB   5.00    15s  (80.0/20.0" in table(timed, images=10, seeds=[0, 1])
    assert "onnxruntime  seed 1 Entropy: boom" in text


def test_unknown_method_is_refused_at_the_command_line(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--methods", "median"])
    assert "--methods: 'median' is not one of" in capsys.readouterr().err


def test_recipes_apply_to_the_schemes_they_fit():
    int8 = [name for name, _, _ in settings_for("int8", None, True, "mobilenet_v1")]
    assert "first, last at w8a8" not in int8 and not any("mixed" in name for name in int8)
    w4a8 = {name: options for name, _, options in settings_for("w4a8", None, True, "resnet50")}
    assert w4a8["mixed precision, 5 bits"] == {
        "mixed_precision": True, "bit_budget": 5.0, "target_agreement": 0.99,
    }  # fmt: skip
    assert w4a8["- learned rounding"] == {"rounding": "nearest"}
    w8a4 = [name for name, _, _ in settings_for("w8a4", None, True, "mobilenet_v1")]
    assert "mixed precision, gate" in w8a4 and "mixed precision, 5 bits" not in w8a4
    methods = settings_for("int8", ["minmax"], False, "mobilenet_v1")
    assert len(methods) == 4 and {method for _, method, _ in methods} == {"minmax"}
