"""Convert MobileNet for the GPU check (``make gpu-weights``; needs TensorFlow).

    python -m benchmarks.gpu_weights [--out gpu-weights]

On a machine with TensorFlow, converts the MobileNet-v1 fixture graph (full size, MLPerf's
node names, seeded weights) with ``python -m convert`` into OUT/mobilenet_v1.pth (17 MB) for
the GPU check, which runs without TensorFlow. ResNet-50's file (102 MB) is too large to copy
along: the check seeds ResNet-50 weights on the GPU machine itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from core.cli import renamed_options, run_cli

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "gpu-weights"


def make_gpu_weights(folder: Path) -> Path:
    """Convert the MobileNet-v1 fixture graph into ``folder``/mobilenet_v1.pth."""
    from fixtures.tf_graphs import write_mobilenet_v1_tgz

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
    print(f"{target} ready ({total / 2**20:.1f} MiB in {folder})")
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="where the .pth goes")
    return parser.parse_args(renamed_options(argv, {"--dir": "--out"}))


def main(argv: list[str] | None = None) -> int:
    make_gpu_weights(parse_args(argv).out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
