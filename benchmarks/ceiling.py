"""What this CPU could do at best: a model's multiply-adds against a measured GEMM rate.

A convolution network cannot run faster than its arithmetic at the rate the CPU multiplies
large fp32 matrices (every kernel library's best case), so ``gemm_gflops`` over a model's
FLOP per image is a ceiling in img/s for any engine on this processor.
"""

from __future__ import annotations

import time

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
