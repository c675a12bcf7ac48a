"""What a conversion writes: the same bytes for the same graph, and on a full disk nothing
but one sentence. Graphs TensorFlow cannot import (a repeated node name, an op type it
does not define, on a node nothing fetches) are one sentence in convert and eval --backend tf.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert import convert_checkpoint
from convert.graph import read_graph_def
from convert.tf_runner import TFGraphRunner
from core.errors import UserError
from tests.conftest import mounted_tmpfs

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[2]
STRAY = "stray/custom_op"
# The real CLI, after a patch (given as code) is applied in that process.
PATCHED_CLI = """
import sys
{patch}
from core.cli import run_cli
from convert.__main__ import main
sys.exit(run_cli(main, sys.argv[1:]))
"""
# Every file convert.api opens for writing whose name holds {marker} fails as on a full disk.
NO_SPACE = """
import builtins, errno, os
import convert.api as api
def _open(path, mode="r", *args, **kwargs):
    if "w" in mode and {marker!r} in os.fspath(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return builtins.open(path, mode, *args, **kwargs)
api.open = _open
"""


def python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def convert_args(pb: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "mobilenet_v1", "--checkpoint", str(pb), "--out", str(out), *extra]


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def outputs(folder: Path) -> list[str]:
    """Files a conversion may leave (the lock aside)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


# ------------------------------------------------------------------ the same bytes


def test_the_same_graph_gives_byte_identical_model_files(mobilenet_v1_pb, tmp_path):
    first = convert_checkpoint("mobilenet_v1", mobilenet_v1_pb, tmp_path / "a" / "one.pth",
                               verify=False, quiet=True)  # fmt: skip
    second = convert_checkpoint("mobilenet_v1", mobilenet_v1_pb, tmp_path / "b" / "two.pth",
                                verify=False, quiet=True)  # fmt: skip
    one, two = (tmp_path / "a" / "one.pth").read_bytes(), (tmp_path / "b" / "two.pth").read_bytes()
    assert one == two
    assert first.file_sha256 == second.file_sha256
    import hashlib

    assert hashlib.sha256(one).hexdigest() == first.file_sha256


# ------------------------------------------------------------------ a full disk


@pytest.mark.slow
@pytest.mark.parametrize("marker", [".model.pth.", ".report.json."])
def test_a_full_disk_is_one_sentence_and_leaves_nothing(mobilenet_v1_pb, tmp_path, marker):
    out, report = tmp_path / "out" / "model.pth", tmp_path / "reports" / "report.json"
    result = python(
        "-c", PATCHED_CLI.format(patch=NO_SPACE.format(marker=marker)),
        *convert_args(mobilenet_v1_pb, out, "--no-verify", "--quiet", "--report", str(report)),
    )  # fmt: skip
    failed = out if marker == ".model.pth." else report
    assert one_error(result) == (
        f"error: not enough disk space in {failed.parent} to write {failed.name}: free some "
        f"space and convert again (nothing was written)"
    )
    assert outputs(out.parent) == [] and outputs(report.parent) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MB tmpfs (root only): too small for MobileNet's 17 MB model file."""
    with mounted_tmpfs(tmp_path / "tmpfs", 4) as mount_point:
        yield mount_point


@pytest.mark.slow
def test_a_really_full_disk_for_the_model_or_the_report(mobilenet_v1_pb, tmp_path, small_tmpfs):
    out = small_tmpfs / "model.pth"
    result = python("-m", "convert", *convert_args(mobilenet_v1_pb, out, "--no-verify", "--quiet"))
    assert one_error(result) == (
        f"error: not enough disk space in {small_tmpfs} to write model.pth: free some space "
        f"and convert again (nothing was written)"
    )
    assert outputs(small_tmpfs) == []
    # The model fits elsewhere, but the report does not fit on the full tmpfs.
    with open(small_tmpfs / "filler", "wb") as filler:
        try:
            while True:
                filler.write(bytes(1 << 16))
                filler.flush()
        except OSError:
            pass
    out = tmp_path / "out" / "model.pth"
    report = small_tmpfs / "report.json"
    result = python("-m", "convert", *convert_args(mobilenet_v1_pb, out, "--no-verify", "--quiet",
                                                   "--report", str(report)))  # fmt: skip
    assert one_error(result).startswith(f"error: not enough disk space in {small_tmpfs} to write")
    assert outputs(out.parent) == [] and outputs(small_tmpfs) == ["filler"]


# ------------------------------------------------------------------ graphs TF cannot import


def damaged_graph(graph_def, how: str):
    """A copy of ``graph_def`` with a node TensorFlow refuses to import, fetched by nothing."""
    bad = tf.compat.v1.GraphDef()
    bad.CopyFrom(graph_def)
    if how == "unknown op":
        node = bad.node.add()
        node.name, node.op = STRAY, "NoSuchOpAnywhere"
    else:  # a second node of an existing node's name
        bad.node.add().CopyFrom(next(n for n in bad.node if n.op == "Const"))
    return bad


def expected_refusal(pb: Path, graph_def, how: str) -> str:
    if how == "unknown op":
        return (
            f"{pb} cannot be loaded: node '{STRAY}' is a NoSuchOpAnywhere op, which TensorFlow "
            f"{tf.__version__} does not define (a custom op, or one of a newer version)"
        )
    name = next(n for n in graph_def.node if n.op == "Const").name
    return (
        f"{pb} is not a usable frozen graph: it defines node {name!r} twice, and node names "
        f"must be unique"
    )


@pytest.fixture(scope="module")
def mobilenet_graph_def(mobilenet_v1_pb):
    return read_graph_def(mobilenet_v1_pb)


HOW = ["unknown op", "duplicate name"]


@pytest.mark.slow
@pytest.mark.parametrize("how", HOW)
def test_convert_refuses_a_graph_tf_cannot_import(mobilenet_graph_def, tmp_path, how):
    pb = tmp_path / "in" / "mobilenet_v1_1.0_224_frozen.pb"
    pb.parent.mkdir()
    pb.write_bytes(damaged_graph(mobilenet_graph_def, how).SerializeToString())
    out = tmp_path / "out" / "model.pth"
    result = python("-m", "convert", *convert_args(pb, out, "--quiet"))
    assert one_error(result) == f"error: {expected_refusal(pb, mobilenet_graph_def, how)}"
    assert not out.parent.exists() or outputs(out.parent) == []


@pytest.mark.slow
@pytest.mark.parametrize("how", HOW)
def test_eval_tf_backend_refuses_a_graph_tf_cannot_import(
    mobilenet_graph_def, tiny_cache, tmp_path, how
):
    pb = tmp_path / "mobilenet_v1_1.0_224_frozen.pb"
    pb.write_bytes(damaged_graph(mobilenet_graph_def, how).SerializeToString())
    out = tmp_path / "results"
    result = python(
        "-m", "eval", "--model", "mobilenet_v1", "--cache-dir", str(tiny_cache),
        "--backend", "tf", "--checkpoint", str(pb), "--out", str(out), "--quiet",
    )  # fmt: skip
    assert one_error(result) == f"error: {expected_refusal(pb, mobilenet_graph_def, how)}"
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("how", HOW)
def test_runner_refuses_a_graph_def_handed_to_it(mobilenet_graph_def, how):
    with pytest.raises(UserError) as refused:
        TFGraphRunner("g.pb", "mobilenet_v1", graph_def=damaged_graph(mobilenet_graph_def, how))
    assert str(refused.value) == expected_refusal(Path("g.pb"), mobilenet_graph_def, how)
