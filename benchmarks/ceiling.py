"""What this CPU could do at best: a model's multiply-adds against measured rates.

Two rates: ``gemm_gflops``, what torch's fp32 matrix multiply reaches on large matrices (a
kernel library's practical best, which a tuned convolution can pass by a few per cent), and
``fma_peak_gflops``, the cores' multiply-add peak, which nothing passes. A model's FLOP per
image over the peak is a hard ceiling in img/s for any engine on this processor.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def multiply_adds(module: nn.Module) -> int:
    """Multiply-adds of one 224x224 image through every conv and linear layer of ``module``."""
    total = 0

    def count(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0]
            total += output.numel() * per_output * layer.kernel_size[1]
        else:
            total += output.numel() * layer.in_features

    hooks = [
        layer.register_forward_hook(count)
        for layer in module.modules()
        if isinstance(layer, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, 224, 224))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def gemm_gflops(seconds: float = 3.0, size: int = 2048) -> float:
    """Best fp32 ``torch.mm`` rate (GFLOP/s) on the current intra-op threads, 0.5 s windows."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        calls, start = 0, time.perf_counter()
        while calls < 1 or time.perf_counter() - start < 0.5:
            torch.mm(a, b, out=out)
            calls += 1
        best = max(best, 2 * size**3 * calls / (time.perf_counter() - start) / 1e9)
    return best


FMA_PEAK_SOURCE = Path(__file__).with_name("fma_peak.c")


def fma_peak_gflops(threads: int) -> float | str:
    """The fp32 multiply-add peak of ``threads`` cores (``fma_peak.c``), or why not measured.

    The GEMM rate is a kernel library's best case; this is the hardware's, so a claim that
    some speed is out of reach rests on a measurement rather than a data sheet's clock.
    """
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as folder:
        program = Path(folder) / "fma_peak"
        build = [compiler, "-O3", "-march=native", "-fopenmp", str(FMA_PEAK_SOURCE),
                 "-o", str(program)]  # fmt: skip
        try:
            subprocess.run(build, check=True, capture_output=True, timeout=120)
            ran = subprocess.run(
                [str(program)], check=True, capture_output=True, text=True, timeout=300,
                env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as err:
            return f"not measured ({type(err).__name__} building or running {compiler})"
    return float(ran.stdout.split()[0])
