"""Hostile graphs are refused before TensorFlow runs them; legitimate graphs never are.

The hostile fixture is the MobileNet-v1 fixture graph whose logits carry a control edge to
a ``WriteFile`` op: plain TensorFlow writes the file when it computes the logits (checked
below), so "the file does not exist" afterwards proves nothing ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tests.conftest as session_fixtures
from convert import convert_checkpoint
from convert.graph import read_graph_def
from convert.safety import ALLOWED_OPS, check_graph_ops
from convert.tf_runner import TFGraphRunner, channels_last_rewrite
from convert.verify import synthetic_images
from core.errors import UserError
from core.profiles import MOBILENET_V1, get_profile

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")
from fixtures.hostile_graphs import WRITE_NODE, run_unguarded, with_side_effect  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LOGITS = "MobilenetV1/Predictions/Reshape"
PROBABILITIES = "MobilenetV1/Predictions/Reshape_1"
REFUSAL = (
    f"node '{WRITE_NODE}' is a WriteFile op, which is not a pure tensor op this converter allows"
)
# Every frozen-graph fixture the session offers, present and future.
GRAPH_FIXTURES = sorted(name for name in dir(session_fixtures) if name.endswith(("_pb", "_tgz")))


@pytest.fixture(scope="module")
def mobilenet_graph_def(mobilenet_v1_pb):
    return read_graph_def(mobilenet_v1_pb)


def _hostile_pb(graph_def, folder: Path, target: str = LOGITS) -> tuple[Path, Path]:
    """Write the hostile graph under ``folder``; return it and the file it would write."""
    folder.mkdir(parents=True, exist_ok=True)
    victim = folder / "written_by_graph.txt"
    pb = folder / "mobilenet_v1_1.0_224_frozen.pb"
    pb.write_bytes(with_side_effect(graph_def, target, victim).SerializeToString())
    return pb, victim


def _python_m(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


# ------------------------------------------------------------------ legitimate graphs


@pytest.mark.parametrize("fixture", GRAPH_FIXTURES)
def test_allowlist_admits_every_node_of_every_fixture_graph(request, fixture):
    path = request.getfixturevalue(fixture)
    model = "mobilenet_v1" if "mobilenet" in fixture else "resnet50"
    graph_def = read_graph_def(path, get_profile(model).archive_member)
    assert {node.op for node in graph_def.node} <= ALLOWED_OPS
    everything = [node.name for node in graph_def.node]
    assert check_graph_ops(graph_def, everything, str(path)) == len(everything)
    rewritten = channels_last_rewrite(graph_def)  # what the runner imports
    assert {node.op for node in rewritten.node} <= ALLOWED_OPS


def test_fixture_list_covers_both_models():
    assert "resnet50_pb" in GRAPH_FIXTURES and "mobilenet_v1_tgz" in GRAPH_FIXTURES


# ------------------------------------------------------------------ hostile graphs


def test_unguarded_tensorflow_runs_the_side_effect(mobilenet_graph_def, tmp_path):
    """The fixture is really hostile: plain TF writes the file while computing logits."""
    hostile = with_side_effect(mobilenet_graph_def, LOGITS, tmp_path / "victim.txt")
    _, images = synthetic_images(MOBILENET_V1, count=1)
    logits = run_unguarded(hostile, "input:0", f"{LOGITS}:0", images)
    assert logits.shape == (1, 1001)
    assert (tmp_path / "victim.txt").read_bytes() == b"written by a frozen graph\n"


@pytest.mark.slow
def test_convert_cli_refuses_hostile_graph(mobilenet_graph_def, tmp_path):
    pb, victim = _hostile_pb(mobilenet_graph_def, tmp_path / "in")
    out = tmp_path / "out" / "model.pth"
    argv = ["convert", "--model", "mobilenet_v1", "--checkpoint", str(pb), "--out", str(out)]
    result = _python_m(*argv)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: refusing to run graph {pb}: {REFUSAL}"
    assert "Traceback" not in result.stderr
    assert not victim.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [".model.pth.lock"]


def test_conversion_without_verification_refuses_too(mobilenet_graph_def, tmp_path):
    """Nothing would run the graph here, but the .pth must not exist to be run later."""
    pb, victim = _hostile_pb(mobilenet_graph_def, tmp_path / "in")
    out = tmp_path / "out" / "model.pth"
    with pytest.raises(UserError, match=REFUSAL):
        convert_checkpoint("mobilenet_v1", pb, out, verify=False, quiet=True)
    assert not victim.exists() and not out.exists() and not out.with_suffix(".json").exists()


def test_runner_refuses_hostile_graph_before_import(mobilenet_graph_def, tmp_path):
    pb, victim = _hostile_pb(mobilenet_graph_def, tmp_path)
    with pytest.raises(UserError) as err:
        TFGraphRunner(pb, "mobilenet_v1")
    assert str(err.value) == f"refusing to run graph {pb}: {REFUSAL}"
    with pytest.raises(UserError, match="WriteFile"):
        TFGraphRunner(pb, "mobilenet_v1", graph_def=read_graph_def(pb))
    assert not victim.exists()


def test_runner_checks_every_later_fetch(mobilenet_graph_def, tmp_path):
    """Clean logits, hostile probabilities: the logits run, the probabilities never do."""
    pb, victim = _hostile_pb(mobilenet_graph_def, tmp_path, target=PROBABILITIES)
    _, images = synthetic_images(MOBILENET_V1, count=1)
    with TFGraphRunner(pb, "mobilenet_v1") as runner:
        assert runner.logits(images).shape == (1, 1001)
        with pytest.raises(UserError, match="WriteFile"):
            runner.run(images, [LOGITS, f"{PROBABILITIES}:0"])
    assert not victim.exists()


@pytest.mark.slow
def test_eval_tf_backend_refuses_hostile_graph(mobilenet_graph_def, tiny_cache, tmp_path):
    pb, victim = _hostile_pb(mobilenet_graph_def, tmp_path / "in")
    out = tmp_path / "results"
    result = _python_m(
        "eval",
        "--model",
        "mobilenet_v1",
        "--cache-dir",
        str(tiny_cache),
        "--backend",
        "tf",
        "--checkpoint",
        str(pb),
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith(REFUSAL)
    assert "Traceback" not in result.stderr
    assert not victim.exists()
    assert not (out / "results.json").exists()


# ------------------------------------------------------------------ the walk itself


def _graph(*nodes: tuple[str, str, list[str]]):
    """A GraphDef from (name, op, inputs) triples; enough for the op walk."""
    graph_def = tf.compat.v1.GraphDef()
    for name, op, inputs in nodes:
        node = graph_def.node.add()
        node.name, node.op = name, op
        node.input.extend(inputs)
    return graph_def


@pytest.mark.parametrize(
    "op", ["ReadFile", "PrintV2", "PyFunc", "SaveV2", "RandomUniform", "StatefulPartitionedCall"]
)
def test_data_edge_to_forbidden_op_is_named(op):
    graph_def = _graph(
        ("x", "Placeholder", []),
        ("evil", op, ["x"]),
        ("logits", "Relu", ["evil:0"]),
    )
    with pytest.raises(UserError) as err:
        check_graph_ops(graph_def, ["logits:0"], "g.pb")
    assert str(err.value) == (
        f"refusing to run graph g.pb: node 'evil' is a {op} op, "
        "which is not a pure tensor op this converter allows"
    )


def test_control_edges_are_followed_through_allowed_nodes():
    graph_def = _graph(
        ("x", "Placeholder", []),
        ("evil", "WriteFile", []),
        ("gate", "NoOp", ["^evil"]),
        ("logits", "Identity", ["x", "^gate"]),
    )
    with pytest.raises(UserError, match="node 'evil' is a WriteFile op"):
        check_graph_ops(graph_def, ["logits"])
    assert check_graph_ops(graph_def, ["x"]) == 1  # a fetch that does not reach it is fine


def test_functions_defined_in_the_graph_are_refused():
    graph_def = _graph(("x", "Placeholder", []), ("logits", "Relu", ["x"]))
    graph_def.library.function.add().signature.name = "Relu"
    with pytest.raises(UserError, match="calls the function 'Relu' defined inside the graph"):
        check_graph_ops(graph_def, ["logits"])


def test_missing_output_is_one_sentence():
    graph_def = _graph(("x", "Placeholder", []))
    with pytest.raises(UserError, match="g.pb has no node 'logits' to run"):
        check_graph_ops(graph_def, ["logits:0"], "g.pb")


def test_allowlist_holds_no_stateful_op():
    """Every allowed op is registered in TF as stateless (no files, queues, variables)."""
    from tensorflow.python.framework import op_def_registry

    definitions = {op: op_def_registry.get(op) for op in sorted(ALLOWED_OPS)}
    assert [op for op, definition in definitions.items() if definition is None] == []
    assert [op for op, definition in definitions.items() if definition.is_stateful] == []
    assert op_def_registry.get("WriteFile").is_stateful  # the check can fail


def test_every_op_the_walkers_read_is_one_the_allowlist_admits():
    """No dead entries: an op the folder or the walkers handle is never refused before."""
    from convert.graph import FOLDABLE_OPS, IGNORED_CONSUMERS, PASS_THROUGH_OPS

    handled = {*FOLDABLE_OPS, *PASS_THROUGH_OPS, *IGNORED_CONSUMERS, "Placeholder"}
    assert sorted(handled - ALLOWED_OPS) == []
