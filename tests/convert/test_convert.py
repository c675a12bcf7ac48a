"""End-to-end conversion of the MLPerf-like fixture graphs, verified against TensorFlow.

Acceptance: logits within 1e-4 of TF relative to the logit magnitude and identical top-1 and
top-5 on every image. The absolute difference is bounded by 1e-3: on these fixtures (logits
up to ~15) TF's and PyTorch's float32 results both lie ~1.4e-4 from a float64 evaluation of
the same weights, so float32 noise alone exceeds 1e-4 in absolute terms.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from convert import convert_checkpoint, load_checkpoint, load_model
from convert.__main__ import main
from convert.graph import read_graph_def
from convert.tf_runner import TFGraphRunner
from convert.verify import synthetic_images
from core.cli import run_cli
from core.profiles import MOBILENET_V1, RESNET50

pytestmark = pytest.mark.tf
SLOW = pytest.mark.slow

ABS_LOGIT_TOL = 1e-3
REL_LOGIT_TOL = 1e-4


# A full ResNet-50 conversion verified against TensorFlow: about 4 s alone, so its tests
# (with their own seconds) are marked slow.
@pytest.fixture(scope="module")
def resnet_cli(resnet50_pb, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("resnet_cli")
    out = out_dir / "resnet50.pth"
    report = out_dir / "report.json"
    argv = [
        "--model",
        "resnet50",
        "--checkpoint",
        str(resnet50_pb),
        "--out",
        str(out),
        "--report",
        str(report),
        "--quiet",
    ]
    assert run_cli(main, argv) == 0
    return out, report


def _assert_accepted(verification: dict) -> None:
    assert verification["passed"], verification
    assert verification["logits_max_rel_diff"] <= REL_LOGIT_TOL
    assert verification["logits_max_abs_diff"] <= ABS_LOGIT_TOL
    assert verification["top1_agreement"] == 1.0 and verification["top5_agreement"] == 1.0
    assert verification["first_failing_layer"] is None


@pytest.mark.slow
def test_cli_writes_model_file_sidecar_and_report(resnet_cli, resnet50_pb):
    out, report_path = resnet_cli
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model_name"] == "resnet50"
    assert sidecar["source_file"] == resnet50_pb.name
    assert sidecar["source_sha256"] == hashlib.sha256(resnet50_pb.read_bytes()).hexdigest()
    assert sidecar["num_classes"] == 1001 and sidecar["label_offset"] == 1
    assert len(sidecar["bn_epsilons"]) == 53
    assert sidecar["bn_epsilons"]["layer3.2.bn2"] == pytest.approx(1.001e-5)
    assert sidecar["file_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sidecar["ignored_tensors"] == []
    _assert_accepted(sidecar["verification"])

    report = json.loads(report_path.read_text())
    layers = [row["layer"] for row in report["verification"]["layers"]]
    assert layers[:3] == ["stem (conv1/bn1/relu)", "maxpool", "layer1.0"]
    assert "layer4.2" in layers and layers[-2:] == ["avgpool", "logits (fc)"]
    rows = {row["layer"]: row for row in report["verification"]["layers"]}
    assert rows["layer4.2"]["tf_tensor"] == "resnet_model/Relu_48"
    assert rows["layer4.2"]["shape"] == [2048, 7, 7]
    assert all(row["within_tolerance"] for row in rows.values())
    assert len(report["verification"]["images"]) == 4
    assert report["tensors"]["layer1.0.conv1.weight"].startswith("resnet_model/conv2d")

    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "mlperf-port.converted-model/2"
    assert payload["model_name"] == "resnet50" and payload["label_offset"] == 1
    assert payload["bn_epsilons"] == sidecar["bn_epsilons"]
    assert payload["source_sha256"] == sidecar["source_sha256"]
    state = payload["state_dict"]
    assert "layer1.0.conv1.weight" in state and "layer1.0.downsample.0.weight" in state
    assert state["fc.weight"].shape == (1001, 2048)


@pytest.mark.slow
def test_load_model_round_trip_matches_tf(resnet_cli, resnet50_pb):
    out, _ = resnet_cli
    model = load_model(out)
    assert not model.training
    _, images = synthetic_images(RESNET50, count=2, seed=7)
    with TFGraphRunner(resnet50_pb, "resnet50") as runner:
        tf_logits = runner.logits(images)
    with torch.no_grad():
        pt_logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert pt_logits.shape == tf_logits.shape == (2, 1001)
    assert np.abs(pt_logits - tf_logits).max() <= ABS_LOGIT_TOL
    np.testing.assert_array_equal(pt_logits.argmax(1), tf_logits.argmax(1))


@pytest.mark.slow
def test_load_needs_only_the_pth(resnet_cli, tmp_path):
    out, _ = resnet_cli
    alone = tmp_path / "alone.pth"
    alone.write_bytes(out.read_bytes())
    model, record = load_checkpoint(alone)
    assert model.layer1[0].bn1.eps == pytest.approx(1.001e-5)
    assert record["model_name"] == "resnet50" and record["num_classes"] == 1001
    assert "state_dict" not in record


@pytest.mark.parametrize(
    ("fixture", "model", "bn_encoding", "data_format"),
    [  # a ResNet-50 conversion with verification: 3-5 s alone, slow
        pytest.param("resnet50_decomposed_pb", "resnet50", "decomposed", "NHWC", marks=SLOW),
        pytest.param("resnet50_batch1_pb", "resnet50", "fused", "NHWC", marks=SLOW),
        pytest.param("resnet50_nchw_pb", "resnet50", "fused", "NCHW", marks=SLOW),
        ("mobilenet_v1_pb", "mobilenet_v1", "fused", "NHWC"),
        ("mobilenet_v1_decomposed_pb", "mobilenet_v1", "decomposed", "NHWC"),
        ("mobilenet_v1_tgz", "mobilenet_v1", "fused", "NHWC"),
        ("mobilenet_v1_batch1_pb", "mobilenet_v1", "fused", "NHWC"),
    ],
)
def test_every_fixture_converts_within_tolerance(
    request, fixture, model, bn_encoding, data_format, tmp_path
):
    checkpoint = request.getfixturevalue(fixture)
    converted = convert_checkpoint(model, checkpoint, tmp_path / "m.pth", quiet=True)
    assert converted.graph["batch_norm"] == bn_encoding
    assert converted.graph["data_format"] == data_format
    _assert_accepted(converted.verification.summary())
    expected_eps = 1e-3 if model == "mobilenet_v1" else 1.001e-5
    assert list(converted.bn_epsilons.values()) == pytest.approx(
        [expected_eps] * len(converted.bn_epsilons)
    )
    if model == "mobilenet_v1":
        assert converted.graph["logits_tensor"] == "MobilenetV1/Predictions/Reshape:0"
    loaded, record = load_checkpoint(tmp_path / "m.pth")
    assert record["bn_epsilons"] == converted.bn_epsilons
    loaded_eps = [m.eps for m in loaded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert loaded_eps == list(converted.bn_epsilons.values())
    assert (
        loaded.state_dict().keys()
        == torch.load(tmp_path / "m.pth", weights_only=True)["state_dict"].keys()
    )


def test_runner_takes_any_batch_on_pinned_graph(mobilenet_v1_batch1_pb):
    from fixtures.tf_graphs import run_graph

    _, images = synthetic_images(MOBILENET_V1, count=3, seed=3)
    with TFGraphRunner(mobilenet_v1_batch1_pb, "mobilenet_v1") as runner:
        assert runner.pinned_batch == 1
        logits = runner.logits(images)
        probs, logits_again = runner.run(
            images, ["MobilenetV1/Predictions/Reshape_1:0", "MobilenetV1/Predictions/Reshape"]
        )
    graph_def = read_graph_def(mobilenet_v1_batch1_pb)
    expected = np.concatenate(
        [
            run_graph(
                graph_def, "input:0", ["MobilenetV1/Predictions/Reshape:0"], images[i : i + 1]
            )[0]
            for i in range(3)
        ]
    )
    assert logits.shape == probs.shape == (3, 1001)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits, logits_again)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_verify_on_real_images_and_cache(mobilenet_v1_pb, tmp_path):
    from fixtures.images import write_val_set
    from preprocess import build_cache

    data = tmp_path / "val"
    write_val_set(data, 3, layout="val_map", seed=5)
    converted = convert_checkpoint(
        "mobilenet_v1", mobilenet_v1_pb, tmp_path / "a.pth", verify_images=data, quiet=True
    )
    assert converted.verification.num_images == 3
    assert "images from" in converted.verification.source
    _assert_accepted(converted.verification.summary())
    # The sidecar is the record's JSON: the verification summary, none of the paths.
    sidecar = json.loads(converted.sidecar.read_text())
    assert sidecar == converted.to_json()
    assert sidecar["verification"] == converted.verification.summary()
    assert "layers" not in sidecar["verification"] and "out" not in sidecar
    assert converted.out == tmp_path / "a.pth"

    build_cache("mobilenet_v1", data, tmp_path / "cache", workers=1, quiet=True)
    converted = convert_checkpoint(
        "mobilenet_v1",
        mobilenet_v1_pb,
        tmp_path / "b.pth",
        verify_cache=tmp_path / "cache",
        verify_limit=2,
        quiet=True,
    )
    assert converted.verification.num_images == 2
    _assert_accepted(converted.verification.summary())


@pytest.mark.parametrize(
    ("variant", "encoding", "classes"),
    [
        ("optimize-for-inference", "folded-into-conv", 1001),
        ("1000-classes-dense-pad", "fused", 1000),
    ],
)
def test_other_encodings_round_trip_through_the_pth(
    request, tmp_path_factory, tmp_path, variant, encoding, classes
):
    """Folded batch norms (epsilon 0) and a 1000-class head survive the file: the module
    loaded back is the one verified against TensorFlow."""
    from tests.conftest import _materialize

    name = f"zoo-mobilenet_v1-{variant}"
    pb = _materialize(
        request,
        tmp_path_factory,
        name,
        f"{name}.pb",
        "write_zoo_pb",
        model="mobilenet_v1",
        variant=variant,
    )
    converted = convert_checkpoint("mobilenet_v1", pb, tmp_path / "m.pth", quiet=True)
    _assert_accepted(converted.verification.summary())
    module, record = load_checkpoint(tmp_path / "m.pth")
    assert record["num_classes"] == classes and record["label_offset"] == classes - 1000
    assert set(record["bn_encoding"].values()) == {encoding}
    eps = [m.eps for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert eps == list(record["bn_epsilons"].values())
    _, images = synthetic_images(MOBILENET_V1, count=2, seed=5)
    graph = converted.graph
    with TFGraphRunner(
        pb,
        "mobilenet_v1",
        input_tensor=graph["input_tensor"],
        logits_tensor=graph["logits_tensor"],
    ) as runner:
        tf_logits = runner.logits(images)
    with torch.no_grad():
        pt_logits = module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert pt_logits.shape == tf_logits.shape == (2, classes)
    assert np.abs(pt_logits - tf_logits).max() <= ABS_LOGIT_TOL
