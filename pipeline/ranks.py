"""``torchrun --nproc-per-node N -m pipeline.run ...``: rank 0 runs the stages, every rank
joins each evaluation.

Fetching, preprocessing and converting write the work dir under its lock: one process's
work, so rank 0 alone does them while the other ranks wait. Each evaluation rank 0 then
starts is handed to every rank (``hand_over``), which evaluates its shard of the cache;
rank 0 gathers, writes and stamps as one process would. The other ranks read the files rank
0 wrote, so across machines the work dir must be on a filesystem they share.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from eval.distributed import DistContext, peer_stopped
from eval.options import EvalSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationJob:
    """One ``evaluate`` call, as every rank makes it."""

    model_name: str
    cache_dir: Path
    settings: EvalSettings
    out_dir: Path


def hand_over(ctx: DistContext, job: EvaluationJob | None) -> None:
    """Rank 0: send the next evaluation to the other ranks; None lets them stop."""
    if ctx.distributed and ctx.is_main:
        _broadcast(job, ctx)


def follow(ctx: DistContext) -> None:
    """Every rank but 0: join each evaluation rank 0 hands over, until it says stop."""
    from eval import evaluate

    while (job := _broadcast(None, ctx)) is not None:
        log.info("rank %d: evaluating %s on its shard", ctx.rank, os.fspath(job.cache_dir))
        evaluate(job.model_name, job.cache_dir, job.settings, out_dir=job.out_dir)


def _broadcast(job: EvaluationJob | None, ctx: DistContext) -> EvaluationJob | None:
    """Rank 0's ``job`` on every rank. The others wait here while rank 0 runs the earlier
    stages: the group's timeout (hours) covers a long preprocessing."""
    import torch.distributed as dist

    message = [job]
    with peer_stopped(ctx.rank):
        dist.broadcast_object_list(message, src=0)
    return message[0]
