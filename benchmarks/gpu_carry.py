"""Prepare the files the GPU check brings along (``make gpu-carry``; needs TensorFlow).

    python -m benchmarks.gpu_carry [--dir gpu-carry]

Converts the MobileNet-v1 fixture graph (full size, MLPerf's node names, seeded weights)
with ``python -m convert``, verified against TensorFlow, into DIR/mobilenet_v1.pth (17 MB).
ResNet-50's converted file (102 MB) does not fit the 64 MiB the GPU machine accepts, so
benchmarks/gpu_check.py builds ResNet-50 weights there instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY_LIMIT_BYTES = 64 * 2**20


def make_carry(folder: Path) -> Path:
    from tests.fixtures.tf_graphs import write_mobilenet_v1_tgz

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "mobilenet_v1.pth"
    with tempfile.TemporaryDirectory() as tmp:
        archive = write_mobilenet_v1_tgz(Path(tmp) / "mobilenet_v1_1.0_224.tgz", seed=3)
        subprocess.run(
            [sys.executable, "-m", "convert", "--model", "mobilenet_v1", "--checkpoint",
             str(archive), "--out", str(target), "--quiet"],
            cwd=ROOT, check=True,
        )  # fmt: skip
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if total > CARRY_LIMIT_BYTES:
        raise SystemExit(f"{folder} holds {total / 2**20:.1f} MiB, more than the 64 MiB allowed")
    print(f"{target} ready ({total / 2**20:.1f} MiB in {folder})")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "gpu-carry")
    make_carry(parser.parse_args(argv).dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
