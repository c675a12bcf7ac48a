"""Graphs that are not the expected model fail in one sentence, with no output left behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convert.__main__ import main
from convert.graph import read_graph_def
from convert.models import MobileNetV1
from convert.registry import extract_weights
from convert.tf_runner import TFGraphRunner
from convert.verify import compare_layers, synthetic_images
from core.cli import run_cli
from core.profiles import MOBILENET_V1, RESNET50

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")


def _run(capsys, model: str, checkpoint, out_dir) -> str:
    out = out_dir / "model.pth"
    code = run_cli(main, ["--model", model, "--checkpoint", str(checkpoint), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    left = [p.name for p in out_dir.iterdir() if p.suffix in (".pth", ".json", ".tmp")]
    assert left == [], f"output left behind: {left}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def resnet_graph_def(resnet50_pb):
    return read_graph_def(resnet50_pb)


def _write(graph_def, path):
    path.write_bytes(graph_def.SerializeToString())
    return path


def test_truncated_file(resnet50_pb, tmp_path, capsys):
    bad = tmp_path / "in" / "resnet50_v1.pb"
    bad.parent.mkdir()
    bad.write_bytes(resnet50_pb.read_bytes()[:50_000])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    msg = _run(capsys, "resnet50", bad, out_dir)
    assert "truncated" in msg and "resnet50_v1.pb" in msg


def test_not_a_graph_def(tmp_path, capsys):
    bad = tmp_path / "in" / "notes.pb"
    bad.parent.mkdir()
    bad.write_text("this is not a protobuf, just some text\n" * 20)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert "not a TensorFlow" in _run(capsys, "resnet50", bad, out_dir)


def test_missing_checkpoint(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert "does not exist" in _run(capsys, "resnet50", tmp_path / "nope.pb", out_dir)


def test_resnet_graph_passed_as_mobilenet(resnet50_pb, tmp_path, capsys):
    msg = _run(capsys, "mobilenet_v1", resnet50_pb, tmp_path)
    assert "not a mobilenet_v1 graph" in msg and "input:0" in msg


def test_missing_tensor_is_named(resnet_graph_def, tmp_path, capsys):
    edited = tf.compat.v1.GraphDef()
    edited.CopyFrom(resnet_graph_def)
    keep = [n for n in edited.node if n.name != "resnet_model/conv2d_5/kernel"]
    del edited.node[:]
    edited.node.extend(keep)
    path = _write(edited, tmp_path / "edited.pb")
    msg = _run(capsys, "resnet50", path, tmp_path)
    assert "resnet_model/conv2d_5/kernel" in msg and "no tensor" in msg


def test_wrong_shape_is_named(resnet_graph_def, tmp_path, capsys):
    edited = tf.compat.v1.GraphDef()
    edited.CopyFrom(resnet_graph_def)
    name = "resnet_model/batch_normalization_7/gamma"
    node = next(n for n in edited.node if n.name == name)
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.ones(3, np.float32)))
    path = _write(edited, tmp_path / "edited.pb")
    msg = _run(capsys, "resnet50", path, tmp_path)
    assert name in msg and "shape (3,)" in msg


def test_wrong_kernel_shape_is_named(resnet_graph_def, tmp_path, capsys):
    edited = tf.compat.v1.GraphDef()
    edited.CopyFrom(resnet_graph_def)
    name = "resnet_model/dense/kernel"
    node = next(n for n in edited.node if n.name == name)
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.ones((2048, 1000), np.float32)))
    path = _write(edited, tmp_path / "edited.pb")
    msg = _run(capsys, "resnet50", path, tmp_path)
    assert name in msg and "1000 classes" in msg


def test_bad_bottleneck_is_named_as_its_pytorch_layer(resnet_graph_def, tmp_path, capsys):
    """Reading a block and storing it report the same name: layer2.1 is the 5th bottleneck."""
    edited = tf.compat.v1.GraphDef()
    edited.CopyFrom(resnet_graph_def)
    nodes = {n.name: n for n in edited.node}
    conv2, conv3 = (nodes[f"resnet_model/conv2d_{i}/Conv2D"] for i in (16, 17))
    conv3.input[0] = conv2.input[0]  # layer2.1's conv3 reads conv1's Relu: conv2 is skipped
    msg = _run(capsys, "resnet50", _write(edited, tmp_path / "edited.pb"), tmp_path)
    assert "the next conv of layer2.1" in msg and "block 5" not in msg


def test_extraction_bug_is_reported_as_the_conversion_not_the_output(
    mobilenet_v1_pb, tmp_path, capsys, monkeypatch
):
    """A state_dict the walker got wrong names the conversion, not the file not yet written."""
    import convert.api

    real = convert.api.extract_weights

    def drops_a_weight(*args, **kwargs):
        extracted = real(*args, **kwargs)
        del extracted.state_dict["features.5.pointwise.conv.weight"]
        return extracted

    monkeypatch.setattr(convert.api, "extract_weights", drops_a_weight)
    msg = _run(capsys, "mobilenet_v1", mobilenet_v1_pb, tmp_path)
    assert f"the conversion of {mobilenet_v1_pb} does not hold a mobilenet_v1 state_dict" in msg
    assert "model.pth" not in msg and "convert it again" not in msg


def test_unused_weights_are_reported(resnet_graph_def):
    edited = tf.compat.v1.GraphDef()
    edited.CopyFrom(resnet_graph_def)
    extra = edited.node.add()
    extra.name, extra.op = "resnet_model/dense_1/kernel", "Const"
    extra.attr["dtype"].type = tf.float32.as_datatype_enum
    extra.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.zeros((4, 4), np.float32)))
    extracted = extract_weights(edited, RESNET50)
    assert extracted.ignored_tensors == ["resnet_model/dense_1/kernel"]


def test_damaged_constants_are_named_or_left_alone(resnet_graph_def, tmp_path, capsys):
    """A weight with fewer bytes than its shape is one sentence naming it; a constant of a
    dtype numpy lacks, read by nothing, does not stop the conversion."""
    edited = tf.compat.v1.GraphDef()
    edited.CopyFrom(resnet_graph_def)
    odd = edited.node.add(name="unused/resource", op="Const")
    odd.attr["dtype"].type = odd.attr["value"].tensor.dtype = tf.resource.as_datatype_enum
    assert extract_weights(edited, RESNET50).ignored_tensors == []
    kernel = next(n for n in edited.node if n.name.endswith("conv2d/kernel"))
    kernel.attr["value"].tensor.tensor_content = kernel.attr["value"].tensor.tensor_content[:-4]
    msg = _run(capsys, "resnet50", _write(edited, tmp_path / "damaged.pb"), tmp_path)
    assert f"constant {kernel.name} cannot be read (" in msg and "damaged" in msg


def test_verification_names_first_bad_layer(mobilenet_v1_pb):
    graph_def = read_graph_def(mobilenet_v1_pb)
    extracted = extract_weights(graph_def, MOBILENET_V1)
    model = MobileNetV1()
    model.load_state_dict(extracted.state_dict)
    with torch.no_grad():
        model.features[5].pointwise.bn.bias += 0.5
    names, images = synthetic_images(MOBILENET_V1, count=2)
    with TFGraphRunner(mobilenet_v1_pb, MOBILENET_V1, graph_def=graph_def) as runner:
        result = compare_layers(
            model, runner, extracted.layer_tensors, "NHWC", names, images, quiet=True
        )
    assert not result.passed
    assert result.first_failing_layer == "features.5"
    rows = {r.layer: r for r in result.layers}
    assert rows["features.4"].within_tolerance and not rows["features.5"].within_tolerance
    assert "first layer over tolerance: features.5" in result.table()
