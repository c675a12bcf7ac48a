"""The fp32 reference of a tf32 or bf16 run: found beside it, and how often they agree.

A non-fp32 run's results.json records the share of its predictions equal to an fp32 run
of the same model, cache and weights in a sibling folder of its output folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from eval.report import Fp32Agreement

log = logging.getLogger(__name__)


def find_fp32_reference(out_dir: Path, results: dict) -> Path | None:
    """A sibling folder of ``out_dir`` holding an fp32 run that this run can be checked on.

    It must have results.json and predictions.npy for the same model, cache fingerprint
    and weights digest, precision fp32 (a results.json without a precision field counts as
    fp32: only backends that run fp32 alone leave it out) and at least as many images; the
    newest such folder wins.
    """
    candidates = []
    for path in Path(out_dir).resolve().parent.glob("*/results.json"):
        if path.parent == Path(out_dir).resolve():
            continue
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        same = all(
            other.get(key) == results.get(key)
            for key in ("model", "cache_fingerprint", "weights_sha256")
        )
        if (
            same
            and other.get("precision", "fp32") == "fp32"
            and other.get("images", 0) >= results["images"]
            and (path.parent / "predictions.npy").is_file()
        ):
            candidates.append((path.stat().st_mtime, path.parent))
    return max(candidates)[1] if candidates else None


def fp32_agreement(out_dir: Path, results: dict, predictions: np.ndarray) -> Fp32Agreement | None:
    """Where the fp32 reference run is, its top-1, and the share of equal predictions."""
    reference = find_fp32_reference(out_dir, results)
    if reference is None:
        log.info("no fp32 run of the same cache and weights beside %s to compare with", out_dir)
        return None
    theirs = np.load(reference / "predictions.npy")[: len(predictions)]
    other = json.loads((reference / "results.json").read_text())
    same = int((theirs == predictions).sum())
    return Fp32Agreement(
        dir=reference,
        top1=other.get("top1") if other.get("images") == len(predictions) else None,
        equal_predictions=same,
        equal_share=round(same / len(predictions), 6) if len(predictions) else None,
    )
