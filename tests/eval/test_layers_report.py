"""``python -m eval layers``: a modified model against fp32 block by block, through the
converter's comparison; the first block below the SQNR threshold is the one damaged."""

import json
import textwrap

import pytest

from convert import convert_checkpoint
from core.cli import run_cli
from eval.__main__ import main
from fixtures.images import write_val_set
from preprocess import build_cache

pytestmark = pytest.mark.tf

N_IMAGES = 6

DAMAGE = """
    import torch

    def damage(model, calibration):
        # Noise on one pointwise convolution: every block before it is untouched.
        conv = model.features[5].pointwise.conv
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(conv.weight.shape, generator=generator) * conv.weight.std()
        with torch.no_grad():
            conv.weight.add_(noise)
        return model
"""


@pytest.fixture(scope="module")
def mobilenet(mobilenet_v1_pb, tmp_path_factory):
    root = tmp_path_factory.mktemp("layers_report")
    write_val_set(root / "data", N_IMAGES, layout="val_map", seed=3)
    build_cache("mobilenet_v1", root / "data", root / "cache", workers=1, quiet=True)
    weights = root / "mobilenet_v1.pth"
    convert_checkpoint("mobilenet_v1", mobilenet_v1_pb, weights, verify=False, quiet=True)
    return root / "cache", weights


def test_the_report_names_the_damaged_block_first(mobilenet, tmp_path, capsys):
    cache_dir, weights = mobilenet
    (tmp_path / "damage.py").write_text(textwrap.dedent(DAMAGE))
    out = tmp_path / "report"
    argv = [
        "layers", "--model", "mobilenet_v1", "--weights", str(weights), "--cache-dir",
        str(cache_dir), "--transform", f"{tmp_path / 'damage.py'}:damage", "--out", str(out),
        "--images", "4", "--quiet",
    ]  # fmt: skip
    assert run_cli(main, argv) == 0
    report = json.loads((out / "layers.json").read_text())
    names = [row["layer"] for row in report["layers"]]
    assert names[:3] == ["features.0", "features.1.depthwise", "features.1.pointwise"]
    assert names[-2:] == ["avgpool", "logits"] and len(names) == 1 + 26 + 2
    assert report["first_below_threshold"] == "features.5.pointwise"
    assert report["images"] == 4
    damaged = names.index("features.5.pointwise")
    for row in report["layers"][:damaged]:  # bit-identical before the damage
        assert row["max_abs_diff"] == 0.0 and row["sqnr_db"] == 200.0 and row["cosine"] == 1.0
    assert report["layers"][damaged]["sqnr_db"] < 20.0
    assert "first block below 20 dB SQNR: features.5.pointwise" in capsys.readouterr().out


def test_the_report_needs_a_method(mobilenet, tmp_path, capsys):
    cache_dir, weights = mobilenet
    argv = [
        "layers", "--model", "mobilenet_v1", "--weights", str(weights), "--cache-dir",
        str(cache_dir), "--out", str(tmp_path / "r"),
    ]  # fmt: skip
    assert run_cli(main, argv) == 1
    assert "give --transform or --quantize" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
