"""The quantization study's scores and its per-setting summary over seeds."""

import numpy as np
import pytest

from benchmarks.quantization_study import agreement, parse_args, table


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
    assert " 85.0 %  21.0 dB  (80.0/20.0 90.0/22.0)" in text
    assert "onnxruntime  seed 1 Entropy: boom" in text


def test_unknown_method_is_refused_at_the_command_line(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--methods", "median"])
    assert "--methods: 'median' is not one of" in capsys.readouterr().err
