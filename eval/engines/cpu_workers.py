"""Run a CPU engine on every core at once, one single-threaded worker per core.

Intra-op threads share each convolution and meet at a barrier after every layer; a worker
per core running its own few images keeps every core busy, and small chunks keep its
activations in cache. On 2 cores (batch 32) that made MobileNet-v1 1.4x faster with the
fast engine and 1.5-2.0x with eager: docs/measurements.md, "Measured so far", Inference
(``python -m benchmarks.bench_inference ... --engines eager@intra-op eager fast@intra-op
fast ...``; the ``@intra-op`` rows run without the workers).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from core.errors import UserError
from core.system import available_cores

# Images each worker runs per call: small enough that one image's activations stay in the
# core's cache between layers, large enough to amortise a call.
CHUNK_IMAGES = 4
# MLPERF_PORT_CPU_WORKERS=N forces N workers; 1 runs every call on intra-op threads (several
# processes sharing one machine may want that).
WORKERS_ENV = "MLPERF_PORT_CPU_WORKERS"


def cores_for_this_process() -> int:
    """This process's share of the cores: torchrun's local ranks split them evenly."""
    local_ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")
    local_ranks = int(local_ranks) if local_ranks.isdigit() and int(local_ranks) > 0 else 1
    return max(1, available_cores() // local_ranks)


def forced_workers() -> int | None:
    """The worker count ``MLPERF_PORT_CPU_WORKERS`` forces (None when unset or empty); any
    other value than a whole number >= 1 is a UserError rather than silently ignored."""
    text = os.environ.get(WORKERS_ENV, "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise UserError(
            f"the environment variable {WORKERS_ENV}={text!r} is not a whole number of "
            f"workers: set it to 1 or more (1 shares each layer between intra-op threads), "
            f"or unset it for one worker per core"
        )
    return int(text)


def worker_count(batch_size: int) -> int:
    """Workers for a batch: one per core, never more than images, or the forced count."""
    forced = forced_workers()
    cores = forced if forced is not None else cores_for_this_process()
    return max(1, min(cores, batch_size))


def chunk_images(batch_size: int, workers: int) -> int:
    """Rows per engine call so that a full batch gives every worker work."""
    return max(1, min(CHUNK_IMAGES, math.ceil(batch_size / workers)))


class CoreWorkers:
    """A pool of single-threaded workers; ``map`` runs one call per chunk, in order."""

    def __init__(self, workers: int):
        self.workers = workers
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(
            workers, thread_name_prefix="core-worker", initializer=torch.set_num_threads,
            initargs=(1,),
        )  # fmt: skip

    def map(self, run: Callable[[torch.Tensor], torch.Tensor], chunks: Sequence) -> list:
        return list(self._pool.map(run, chunks))

    def per_thread(self, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """This worker's own copy of something (a staging buffer), made on first use."""
        value = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = make()
        return value
