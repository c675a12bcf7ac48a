"""The converted PyTorch model and the original TF graph, end to end over a real cache.

Fixture graphs (tests/conftest.py) stand in for MLPerf's files; the cache is built by
preprocess from synthetic JPEGs and the .pth by convert, exactly as the pipeline does.
"""

import json

import numpy as np
import pytest

import eval as eval_stage
from convert import convert_checkpoint
from core.profiles import get_profile
from eval.backends import make_backend
from eval.compare import main as compare_main
from fixtures.images import write_val_set
from preprocess import build_cache, load_cache

pytestmark = pytest.mark.tf

N_IMAGES = 8


# ResNet-50's conversion and both backends' runs take over 5 s: slow.
@pytest.fixture(
    scope="module", params=["mobilenet_v1", pytest.param("resnet50", marks=pytest.mark.slow)]
)
def converted(request, tmp_path_factory):
    """(model, cache_dir, frozen graph, converted .pth) for one model."""
    model = request.param
    pb = request.getfixturevalue(f"{model}_pb")
    root = tmp_path_factory.mktemp(f"agree_{model}")
    write_val_set(root / "data", N_IMAGES, layout="val_map", seed=11)
    build_cache(model, root / "data", root / "cache", workers=1, quiet=True)
    weights = root / f"{model}.pth"
    convert_checkpoint(model, pb, weights, verify=False, quiet=True)
    return model, root / "cache", pb, weights


def test_torch_and_tf_backends_agree(converted):
    model, cache_dir, pb, weights = converted
    images = load_cache(cache_dir, model).images
    profile = get_profile(model)
    torch_settings = eval_stage.EvalSettings(weights=weights, engine="eager")
    with make_backend(profile, torch_settings) as torch_backend:
        torch_logits = torch_backend.logits(images)
    with make_backend(profile, eval_stage.EvalSettings(backend="tf", checkpoint=pb)) as tf_backend:
        tf_logits = tf_backend.logits(images)
    assert torch_logits.shape == tf_logits.shape == (N_IMAGES, 1001)
    scale = float(np.abs(tf_logits).max())
    np.testing.assert_allclose(torch_logits, tf_logits, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(torch_logits.argmax(1), tf_logits.argmax(1))


# One model is enough for the whole-pipeline check; ResNet-50 at batch 1 is slow on CPU.
@pytest.mark.parametrize("converted", ["mobilenet_v1"], indirect=True)
def test_predictions_agree_across_backends_and_batch_sizes(converted, tmp_path, capsys):
    model, cache_dir, pb, weights = converted
    runs = {
        "torch_b1": {"weights": weights, "batch_size": 1},
        "torch_b7": {"weights": weights, "batch_size": 7},
        "tf_b3": {"backend": "tf", "checkpoint": pb, "batch_size": 3},
    }
    results = {
        name: eval_stage.evaluate(model, cache_dir, out_dir=tmp_path / name, quiet=True, **kw)
        for name, kw in runs.items()
    }
    predictions = {name: np.load(tmp_path / name / "predictions.npy") for name in runs}
    np.testing.assert_array_equal(predictions["torch_b1"], predictions["torch_b7"])
    np.testing.assert_array_equal(predictions["torch_b1"], predictions["tf_b3"])
    np.testing.assert_array_equal(
        np.load(tmp_path / "torch_b1" / "top5.npy"), np.load(tmp_path / "torch_b7" / "top5.npy")
    )
    assert {r.correct_top1 for r in results.values()} == {results["tf_b3"].correct_top1}
    tf_results = json.loads((tmp_path / "tf_b3" / "results.json").read_text())
    assert tf_results["backend"] == "tf" and "checkpoint_sha256" in tf_results
    assert "weights_sha256" in results["torch_b7"].to_json()

    code = compare_main(
        [str(tmp_path / "torch_b7"), str(tmp_path / "tf_b3"), "--files", str(cache_dir)]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == f"agreement: {N_IMAGES}/{N_IMAGES} (100.000 %)"
