"""The fp32 reference of a modified run (tf32, bf16, a transform, int8): an unmodified fp32
run of the same model, cache and weights in a sibling folder, and the share of predictions
the two have in common.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import exclusive_lock
from eval.compare import load_predictions
from eval.results import PREDICTIONS_FILE, RESULTS_FILE, Fp32Agreement

log = logging.getLogger(__name__)


def _newest_fp32_run(out_dir: Path, results: dict) -> tuple[Path, dict] | None:
    """The newest sibling folder of ``out_dir`` (and its results.json) holding an fp32 run
    of the same model, cache fingerprint and weights digest, with no transform, with
    predictions.npy and at least as many images. No precision field counts as fp32 (only
    fp32-only backends omit it).
    """
    here = Path(out_dir).resolve()
    candidates = []
    for path in here.parent.glob(f"*/{RESULTS_FILE}"):
        if path.parent == here:
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
            and other.get("transform") is None
            and other.get("images", 0) >= results["images"]
            and (path.parent / PREDICTIONS_FILE).is_file()
        ):
            candidates.append((path.stat().st_mtime, str(path.parent), other))
    if not candidates:
        return None
    _, folder, other = max(candidates, key=lambda c: c[:2])
    return Path(folder), other


def fp32_agreement(out_dir: Path, results: dict, predictions: np.ndarray) -> Fp32Agreement | None:
    """Where the fp32 reference run is, its top-1, the share of equal predictions, and its
    predictions for these images (``.predictions``); they are read with ``eval compare``'s
    checks, and too few are not used."""
    found = _newest_fp32_run(out_dir, results)
    if found is None:
        log.info("no fp32 run of the same cache and weights beside %s to compare with", out_dir)
        return None
    reference, other = found
    try:
        # Under its lock, and only if its results.json is still the one chosen: a run
        # writing there now must not pair its predictions with another run's results.
        with exclusive_lock(reference, "fp32 reference folder"):
            if json.loads((reference / RESULTS_FILE).read_text()) != other:
                raise UserError(f"{reference} was rewritten while it was read")
            theirs = load_predictions(reference)
    except (UserError, OSError, ValueError) as err:
        log.warning("fp32 reference not used: %s", err)
        return None
    if len(theirs) < len(predictions):
        log.warning("fp32 reference not used: %s holds fewer predictions than this run", reference)
        return None
    theirs = theirs[: len(predictions)]
    same = int((theirs == predictions).sum())
    return Fp32Agreement(
        dir=reference,
        top1=other.get("top1") if other.get("images") == len(predictions) else None,
        equal_predictions=same,
        equal_share=round(same / len(predictions), 6) if len(predictions) else None,
        predictions=theirs,
    )
