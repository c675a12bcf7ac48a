"""One rank's share of the cache under torchrun, and rank 0's gather of every share.

``eval.distributed`` holds the process-group plumbing; this module is what the evaluation
does with it: each rank reads a ``CacheShard`` and rank 0 joins the shards' top-5 labels.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from eval import distributed
from eval.metrics import AccuracyCounter

if TYPE_CHECKING:
    from eval.evaluate import EvaluationOutcome


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


def gather_outcome(
    outcome: EvaluationOutcome, cache, count: int, ctx: distributed.DistContext
) -> EvaluationOutcome | None:
    """Rank 0: every rank's top-5 in rank order, scored over all ``count`` images.

    None on the other ranks.
    """
    mine = (outcome.top5, outcome.inference_seconds, outcome.wall_seconds)
    gathered = distributed.gather_to_main(mine, ctx)
    if gathered is None:
        return None
    top5 = distributed.join_shards([shard for shard, _, _ in gathered], count)
    counter = AccuracyCounter()
    counter.update(top5, np.asarray(cache.labels[:count], dtype=np.int64))
    # The ranks run side by side: the slowest one is the run's time.
    return dataclasses.replace(
        outcome,
        top5=top5,
        counter=counter,
        inference_seconds=max(seconds for _, seconds, _ in gathered),
        wall_seconds=max(wall for _, _, wall in gathered),
        resumed_from=0,
    )
