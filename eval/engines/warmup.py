"""Each batch shape a run will see runs once during setup, so cuDNN autotuning, the
allocator and lazy initialisation are paid for there, not inside the timed run.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch


class _Engine(Protocol):
    """What warm-up needs of an ``eval.engines.PreparedEngine`` (that module imports this
    one, so it is not imported here)."""

    device: torch.device
    channels_last: bool
    notes: list[str]

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def warmup_batch_sizes(num_images: int | None, batch_size: int) -> list[int]:
    """The batch shapes a run will see: the full batch, and the tail when there is one."""
    if num_images is None:
        return [batch_size]
    full, tail = divmod(num_images, batch_size)
    return ([batch_size] if full else []) + ([tail] if tail else [])


def warm_up(prepared: _Engine, num_images: int | None, batch_size: int) -> None:
    """Run each batch shape once (cuDNN autotune, allocator, lazy init); note what it cost."""
    start = time.perf_counter()
    shapes = warmup_batch_sizes(num_images, batch_size)
    example = example_batch(max(shapes, default=1), prepared.device, prepared.channels_last)
    for rows in shapes:
        prepared(example[:rows])
    if prepared.device.type == "cuda":
        torch.cuda.synchronize(prepared.device)
    prepared.notes.append(f"warm-up of batch shapes {shapes}: {time.perf_counter() - start:.2f} s")


def example_batch(batch_size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    # Deterministic, in the value range of both recipes' inputs (vgg is roughly +-128).
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch_size, 3, 224, 224, generator=generator).mul_(50.0).to(device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    return example
