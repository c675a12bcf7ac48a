"""One evaluation spread over the processes ``torchrun --nproc-per-node N -m eval ...`` starts.

``init_from_environment`` joins the group torchrun describes (NCCL on CUDA, gloo on the
CPU). Each rank evaluates one contiguous ``CacheShard`` (``shard_bounds``: nothing is
padded, so unlike ``DistributedSampler`` no image is counted twice); rank 0 gathers the
top-5 labels in rank order (``gather_predictions``), so its predictions are those of one
process, and alone writes. Without WORLD_SIZE > 1 everything here is a single process.

Only plain arrays, numbers and dicts cross the group here: this module knows nothing of
the evaluation's own types (``eval.evaluate`` scores and rebuilds its outcome).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import UserError, first_line

log = logging.getLogger(__name__)

# Rank 0 may hold the others at a collective while it waits for the --out lock (--wait) or
# reads a slow disk; a long timeout keeps such a run alive.
_GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the group: rank ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Whether this context joined the group (and so leaves it): pipeline.run joins before
    # its stages, and the evaluations inside it use that group without leaving it.
    joined: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"the environment variable {name}={value!r} is not a number") from None


def device_for_rank(device: str, ctx: DistContext) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per process)."""
    if ctx.distributed and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def init_from_environment(device: str, command: str = "eval") -> DistContext:
    """Join torchrun's process group when WORLD_SIZE > 1; else the single-process context.
    ``command``: the module a refusal tells the user to start with torchrun."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext()
    import torch
    import torch.distributed as dist

    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_available():
        raise UserError("this PyTorch was built without torch.distributed; run one process")
    if dist.is_initialized():  # joined by the caller (pipeline.run), who also leaves it
        return DistContext(rank, world_size, local_rank)
    if backend == "nccl":
        _check_local_gpu(device, local_rank)
    try:
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=_GROUP_TIMEOUT)
    except (RuntimeError, ValueError) as err:  # no MASTER_ADDR, no GPU LOCAL_RANK, ...
        first = first_line(err, 200)
        raise UserError(
            f"WORLD_SIZE={world_size} but this process cannot join a {backend} group "
            f"({first}); start it with torchrun --nproc-per-node N -m {command} ..."
        ) from None
    log.info("rank %d of %d joined the %s group", rank, world_size, backend)
    return DistContext(rank, world_size, local_rank, joined=True)


def _check_local_gpu(device: str, local_rank: int) -> None:
    """UserError unless this rank has its GPU: a CPU build of PyTorch fails in
    ``torch.cuda.set_device`` with an AttributeError, not a sentence."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"--device {device} was requested but this PyTorch ({torch.__version__}) sees no "
            f"CUDA GPU; use --device cpu (torchrun ranks then share the CPU)"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(
            f"LOCAL_RANK={local_rank} but this machine has {count} CUDA device(s): start at "
            f"most {count} processes per machine (torchrun --nproc-per-node {count})"
        )


def shutdown(ctx: DistContext) -> None:
    """Leave the group (all ranks together), if this context joined it."""
    if ctx.joined:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def peer_stopped(rank: int):
    """A collective that fails because another rank stopped (gloo: "connection closed by
    peer") becomes one sentence on this rank; the rank that stopped said why."""
    try:
        yield
    except RuntimeError as err:
        first = first_line(err).split("] ", 1)[-1][:120]  # gloo prefixes its source and line
        raise UserError(
            f"rank {rank} stopped: another rank stopped first, and its error says why ({first})"
        ) from None


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous shard of ``count`` images: the first
    ``count % world_size`` ranks take one more; together they cover ``0..count`` once."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a group of {world_size}")
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def join_shards(shards: list[np.ndarray], count: int) -> np.ndarray:
    """Concatenate per-rank top-5 arrays (rank order) and check they cover ``count`` rows."""
    joined = np.concatenate(shards, axis=0)
    if len(joined) != count:
        raise RuntimeError(f"the ranks returned {len(joined)} predictions for {count} images")
    return joined


class CacheShard:
    """Images ``start:stop`` of a cache, indexed from 0 (one rank's share)."""

    def __init__(self, cache, start: int, stop: int):
        self.cache, self.start, self.stop = cache, start, stop
        self.labels = cache.labels[start:stop]
        self.fingerprint = getattr(cache, "fingerprint", None)

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.cache.read(self.start + start, self.start + stop, out=out)


def gather_predictions(
    top5: np.ndarray, timings: dict[str, float], inputs: Any, count: int, ctx: DistContext
) -> dict[str, Any] | None:
    """Rank 0: ``{"top5": every rank's top-5 in rank order (``count`` rows), **timings}``,
    each timing the largest of the ranks' (they run side by side: the slowest one is the
    run's time); None on the other ranks. ``inputs`` names the model file and cache bytes
    this rank loaded (``eval.journal.loaded_inputs``): rank 0 records only its own, so
    ranks that loaded different ones (a file replaced as they started) are refused."""
    import torch.distributed as dist

    gathered = [None] * ctx.world_size if ctx.is_main else None
    with peer_stopped(ctx.rank):
        dist.gather_object((top5, timings, inputs), gathered, dst=0)
    if gathered is None:
        return None
    shards, rank_timings, rank_inputs = zip(*gathered, strict=True)
    if any(other != rank_inputs[0] for other in rank_inputs):
        raise UserError(
            "the ranks loaded different model or cache files (one was replaced as they "
            "started): run again"
        )
    slowest = {name: max(t[name] for t in rank_timings) for name in timings}
    return {"top5": join_shards(list(shards), count), **slowest}
