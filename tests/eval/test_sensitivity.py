"""``python -m eval layers --sensitivity``: each layer of the converted model quantized alone
at its width, measured on the calibration images; sensitivity.json, the table, refusals."""

import contextlib
import hashlib
import io
import json
import math
import sys

import pytest

from core.cli import run_cli
from eval.__main__ import main
from eval.method.sensitivity import (
    INFINITE_SQNR_NOTE,
    SENSITIVITY_FILE,
    SENSITIVITY_PLOT,
    SensitivityReport,
    write_sensitivity,
)
from quantize.sensitivity import LayerCost

N_IMAGES = 4  # the calibration set: every image of the stand-in cache
MOBILENET_LAYERS = 1 + 26 + 1  # the first convolution, 13 depthwise/pointwise pairs, classifier


@pytest.fixture(scope="module")
def mobilenet(mobilenet_v1_pb, tmp_path_factory):
    from convert import convert_checkpoint
    from fixtures.images import write_val_set
    from preprocess import build_cache

    root = tmp_path_factory.mktemp("sensitivity")
    write_val_set(root / "data", N_IMAGES, layout="val_map", seed=3)
    build_cache("mobilenet_v1", root / "data", root / "cache", workers=1, quiet=True)
    weights = root / "mobilenet_v1.pth"
    convert_checkpoint("mobilenet_v1", mobilenet_v1_pb, weights, verify=False, quiet=True)
    return root / "cache", weights


def _argv(cache_dir, weights, out, *options):
    return [
        "layers", "--sensitivity", "--model", "mobilenet_v1", "--weights", str(weights),
        "--cache-dir", str(cache_dir), "--out", str(out), "--quiet", *options,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def w4a8_run(mobilenet, tmp_path_factory):
    """One w4a8 run, the first layer at w8a8 (nearest rounding: seconds, not minutes):
    (its out folder, sensitivity.json, what it printed)."""
    cache_dir, weights = mobilenet
    out = tmp_path_factory.mktemp("w4a8") / "out"
    options = ("--quantize", "w4a8", "--layer-bits", "first=w8a8", "--rounding", "nearest")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_cli(main, _argv(cache_dir, weights, out, *options)) == 0
    return out, json.loads((out / SENSITIVITY_FILE).read_text()), printed.getvalue()


def _converted_layers(weights) -> list[tuple[str, int]]:
    """(layer, weight count) of every convolution and the classifier, in forward order."""
    from torch import nn

    from convert.api import load_checkpoint

    model, _ = load_checkpoint(weights)
    return [
        (name.removesuffix(".conv"), module.weight.numel())
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


@pytest.mark.tf
@pytest.mark.slow
def test_the_rows_cover_every_layer_in_forward_order_at_its_width(mobilenet, w4a8_run):
    _, report, _ = w4a8_run
    rows = report["layers"]
    assert [(r["layer"], r["parameters"]) for r in rows] == _converted_layers(mobilenet[1])
    assert len(rows) == MOBILENET_LAYERS
    assert (rows[0]["layer"], rows[0]["bits"]) == ("features.0", "w8a8")
    assert (rows[0]["weight_bits"], rows[0]["activation_bits"]) == (8, 8)
    assert {r["bits"] for r in rows[1:]} == {"w4a8"}
    assert report["layer_bits"] == {"first": "w8a8"}
    assert report["recipe"]["layer_bits"] == {r["layer"]: r["bits"] for r in rows}


@pytest.mark.tf
@pytest.mark.slow
def test_w4a8_costs_are_finite_positive_and_ranked(w4a8_run):
    _, report, _ = w4a8_run
    rows = report["layers"]
    for row in rows:
        assert row["logits_sqnr_db"] is not None and math.isfinite(row["logits_sqnr_db"])
        assert row["logits_sqnr_db"] > 0, row
        assert 0.0 <= row["top1_changed_share"] <= 1.0
    worst = sorted(rows, key=lambda r: r["logits_sqnr_db"])[:5]
    assert report["most_damaging"] == [r["layer"] for r in worst]
    assert [r["rank"] for r in worst] == [1, 2, 3, 4, 5]
    assert sum(r["rank"] is not None for r in rows) == 5
    assert report["note"] == INFINITE_SQNR_NOTE


@pytest.mark.tf
@pytest.mark.slow
def test_the_record_names_the_calibration_images_the_weights_and_the_recipe(mobilenet, w4a8_run):
    _, report, _ = w4a8_run
    assert (report["model"], report["scheme"]) == ("mobilenet_v1", "w4a8")
    assert report["weights"]["sha256"] == hashlib.sha256(mobilenet[1].read_bytes()).hexdigest()
    images = report["images"]
    assert images["set"] == "calibration" and images["count"] == N_IMAGES
    assert (
        images["source"]
        == f"calibration images: the first {N_IMAGES} images of the evaluated cache"
    )
    assert images["mlperf_list"] is False and "not MLPerf's list" in images["note"]
    assert "never on evaluation images" in images["rule"]
    recipe = report["recipe"]
    assert (recipe["scheme"], recipe["rounding"], recipe["calibration_images"]) == (
        "w4a8",
        "nearest",
        N_IMAGES,
    )
    assert "bias correction" in recipe["techniques"]


@pytest.mark.tf
@pytest.mark.slow
def test_the_table_lists_the_layers_in_forward_order_with_the_worst_ranked(w4a8_run):
    out, report, printed = w4a8_run
    lines = printed.strip().splitlines()
    assert lines[0].split() == ["rank", "layer", "wXaY", "parameters", "logits", "SQNR", "dB",
                                "top-1", "changed", "%"]  # fmt: skip
    body = lines[2:-1]
    names = [r["layer"] for r in report["layers"]]
    ranks = {r["layer"]: r["rank"] for r in report["layers"]}
    assert len(body) == len(names)
    for line, name in zip(body, names, strict=True):
        cells = line.split()
        assert name in cells and ("w8a8" in cells or "w4a8" in cells)
        assert (cells[0] == str(ranks[name])) == (ranks[name] is not None)
    worst = report["most_damaging"][0]
    assert lines[-1].startswith(f"most sensitive: {worst} (")
    changing = sum(r["top1_changed_share"] > 0 for r in report["layers"])
    assert f"{changing} of {len(names)} layers change some top-1 answers" in lines[-1]
    assert report["summary"] == lines[-1]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [SENSITIVITY_FILE] + ([SENSITIVITY_PLOT] if _has_matplotlib() else [])
    )


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.tf
@pytest.mark.slow
def test_the_chart_is_written_when_matplotlib_is_installed(w4a8_run):
    pytest.importorskip("matplotlib")
    out, _, _ = w4a8_run
    assert (out / SENSITIVITY_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.tf
def test_a_run_that_fails_writes_nothing(mobilenet, tmp_path, capsys):
    cache_dir, weights = mobilenet
    out = tmp_path / "out"
    argv = _argv(cache_dir, weights, out, "--quantize", "w4a8", "--layer-bits", "nosuch=w8a8")
    assert run_cli(main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nosuch" in err
    assert not (out / SENSITIVITY_FILE).exists() and not (out / SENSITIVITY_PLOT).exists()


# ---------------------------------------------------------------- refusals, before any work


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("--quantize", "int8"), "int8 runs the int8 kernels with every layer at 8 bits"),
        (("--transform", "x.py:f"), "give --quantize wXaY (such as w4a8), not --transform"),
        ((), "--sensitivity needs a simulated --quantize wXaY"),
        (("--quantize", "w4a8", "--mixed-precision"), "--mixed-precision plans its own"),
        (("--quantize", "w4a8", "--images", "8"), "--images is for the block comparison"),
        (("--quantize", "w4a8", "--threshold-db", "30"), "--threshold-db is for the block"),
    ],
)
def test_sensitivity_refuses_what_it_cannot_measure(tmp_path, capsys, options, expected):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    out = tmp_path / "out"
    assert run_cli(main, _argv(tmp_path / "cache", weights, out, *options)) == 1
    err = capsys.readouterr().err
    assert expected in err and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_missing_weights_and_a_missing_cache_are_one_sentence(tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(tmp_path / "cache", tmp_path / "none.pth", out, "--quantize", "w4a8")
    assert run_cli(main, argv) == 1
    assert capsys.readouterr().err == f"error: weights file not found: {tmp_path / 'none.pth'}\n"
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    assert run_cli(main, _argv(tmp_path / "cache", weights, out, "--quantize", "w4a8")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no preprocessed cache at {tmp_path / 'cache'}")
    assert err.count("\n") == 1 and not out.exists()


# ---------------------------------------------------------------- the report, made by hand


def _report(sqnrs, shares) -> SensitivityReport:
    layers = [
        LayerCost(f"layer{i}", (4, 8), 10 * (i + 1), sqnr, share)
        for i, (sqnr, share) in enumerate(zip(sqnrs, shares, strict=True))
    ]
    images = {"count": 8, "source": "calibration images: test"}
    return SensitivityReport("mobilenet_v1", "w4a8", None, {}, images, {"x": math.inf}, layers)


def test_an_unchanged_layer_is_null_in_the_json_and_never_ranked():
    report = _report([math.inf, 12.0, 30.0, 9.0, 15.0, 20.0, 25.0], [0, 0.25, 0, 0.5, 0, 0, 0])
    document = report.to_json()
    json.dumps(document, allow_nan=False)  # no infinity anywhere, the recipe's included
    assert document["layers"][0]["logits_sqnr_db"] is None and document["note"]
    assert document["recipe"] == {"x": None}
    assert document["most_damaging"] == ["layer3", "layer1", "layer4", "layer5", "layer6"]
    assert [row["rank"] for row in document["layers"]] == [None, 2, None, 1, 3, 4, 5]
    assert report.summary_line() == (
        "most sensitive: layer3 (9.0 dB logits SQNR, top-1 changed on 50.0 %); "
        "2 of 7 layers change some top-1 answers on 8 calibration images"
    )
    assert "inf" in report.table().splitlines()[2].split()


def test_a_report_where_nothing_changes_says_so():
    report = _report([math.inf, math.inf], [0.0, 0.0])
    assert report.ranked() == []
    assert report.summary_line().startswith("no layer changes the logits when quantized alone")


def test_without_matplotlib_no_chart_is_left_behind(tmp_path, monkeypatch):
    (tmp_path / SENSITIVITY_PLOT).write_bytes(b"an older run's chart")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    write_sensitivity(tmp_path, _report([10.0, math.inf], [0.5, 0.0]))
    assert json.loads((tmp_path / SENSITIVITY_FILE).read_text())["layers"][1]["rank"] is None
    assert not (tmp_path / SENSITIVITY_PLOT).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SENSITIVITY_FILE]
