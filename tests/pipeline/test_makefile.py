"""The Makefile passes --batch-size only when BATCH_SIZE is set (else the device decides),
and the GPU check runs on CUDA unless DEVICE is given."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*assignments: str, target: str = "run") -> str:
    """The commands `make <target>` would execute, without running them."""
    proc = subprocess.run(["make", "-n", target, *assignments], cwd=ROOT, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return proc.stdout


def test_no_batch_size_unless_asked():
    assert "--batch-size" not in _dry_run("DEVICE=cuda")
    assert "--device cuda" in _dry_run("DEVICE=cuda")


def test_batch_size_passed_when_set():
    assert "--batch-size 8" in _dry_run("BATCH_SIZE=8")


def test_gpu_check_is_on_cuda_unless_device_is_given():
    assert "--device" not in _dry_run(target="gpu-check")  # gpu_check's default: cuda
    assert "--device cpu" in _dry_run("DEVICE=cpu", target="gpu-check")
