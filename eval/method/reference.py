"""The fp32 run a modified model (tf32, bf16, a transform, int8) is judged against: named
with ``--reference DIR``, or else the sibling folder of ``--out`` holding an unmodified
fp32 run of the same model, cache and weights. Never guessed by age: a named run made from
other weights, another cache or fewer images is refused in one sentence, and so are
several matching siblings that disagree.

A reference is read under its folder's lock, and trusted only when its predictions.npy is
the one its results.json was written with (its sha256) and gives the top-1 it records.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import exclusive_lock
from core.records import Record
from eval.results import PREDICTIONS_FILE, RESULTS_FILE, load_predictions, read_results

log = logging.getLogger(__name__)

# What a reference must share with the run it judges, with the words that say how not.
_SAME = {
    "model": "is a run of another model",
    "cache_fingerprint": "was evaluated on another cache (other images or labels)",
    "weights_sha256": "was made from other weights",
}


@dataclass(frozen=True)
class RunIdentity:
    """What a modified run and its fp32 reference must have in common."""

    model: str
    cache_fingerprint: str | None
    weights_sha256: str | None
    images: int  # how many of the cache's first images the modified run evaluates


@dataclass
class Fp32Reference(Record):
    """An fp32 run of the same model, cache and weights, as results.json records it."""

    dir: Path
    chosen_by: str  # "--reference", or how the sibling was found
    images: int  # the images the reference covers (at least the modified run's)
    model: str
    cache_fingerprint: str | None
    weights_sha256: str | None
    predictions_sha256: str
    top1: float | None = None  # on the modified run's images, set once judged
    equal_predictions: int | None = None
    equal_share: float | None = None
    predictions: np.ndarray | None = field(default=None, repr=False)  # for these images

    _not_json = ("predictions",)


def find_reference(
    identity: RunIdentity, labels: np.ndarray, out_dir: Path | None, named: Path | None
) -> Fp32Reference | None:
    """The named reference (refused in one sentence when it does not fit), else the one
    sibling of ``out_dir`` that fits (None when there is none; a UserError when several
    that fit disagree). ``labels``: the cache's, to check a reference's recorded top-1."""
    if named is not None:
        reason = _unfit(Path(named), identity, read_results(named))
        if reason is not None:
            raise UserError(
                f"--reference {named} {reason}: name an unmodified fp32 run of the same "
                "model, cache and weights"
            )
        return _read(Path(named), identity, labels, "--reference")
    if out_dir is None:
        return None
    here = Path(out_dir).resolve()
    folders = sorted(p.parent for p in here.parent.glob(f"*/{RESULTS_FILE}") if p.parent != here)
    fitting = [f for f in folders if _unfit(f, identity, read_results(f)) is None]
    if not fitting:
        log.info("no fp32 run of the same model, cache and weights beside %s", out_dir)
        return None
    how = "the sibling fp32 run with the same model, cache and weights digests"
    found = [_read(folder, identity, labels, how) for folder in fitting]
    _check_agree(found)
    return found[0]


def _unfit(folder: Path, identity: RunIdentity, results: dict | None) -> str | None:
    """Why ``folder`` cannot be ``identity``'s reference, as the end of a sentence; None
    when it can. ``results``: its results.json as read (None: unreadable)."""
    if results is None:
        return f"holds no readable {RESULTS_FILE}"
    for key, words in _SAME.items():
        if results.get(key) != getattr(identity, key):
            return words
    if results.get("precision", "fp32") != "fp32" or results.get("transform") is not None:
        return "is not an unmodified fp32 run"
    if results.get("images", 0) < identity.images:
        return f"covers {results.get('images')} images, fewer than this run's {identity.images}"
    if not (folder / PREDICTIONS_FILE).is_file():
        return f"holds no {PREDICTIONS_FILE}"
    return None


def _read(folder: Path, identity: RunIdentity, labels: np.ndarray, how: str) -> Fp32Reference:
    """The reference in ``folder``, read under its lock and checked (one sentence if not)."""
    # Under its lock, and only if its results.json is still the one chosen: a run writing
    # there now must not pair its predictions with another run's results.
    with exclusive_lock(folder, "fp32 reference folder"):
        results = read_results(folder)
        if _unfit(folder, identity, results) is not None:
            raise UserError(f"the fp32 reference {folder} was rewritten while it was read")
        data = (folder / PREDICTIONS_FILE).read_bytes()
        predictions = load_predictions(folder)
    digest = hashlib.sha256(data).hexdigest()
    _check_predictions(folder, results, predictions, digest, labels)
    return Fp32Reference(
        dir=folder,
        chosen_by=how,
        images=int(results["images"]),
        model=results["model"],
        cache_fingerprint=results.get("cache_fingerprint"),
        weights_sha256=results.get("weights_sha256"),
        predictions_sha256=digest,
        predictions=np.asarray(predictions[: identity.images], dtype=np.int64),
    )


def _check_predictions(
    folder: Path, results: dict, predictions: np.ndarray, digest: str, labels: np.ndarray
) -> None:
    """The predictions are the ones the results were written with, and give its top-1."""
    recorded = results.get("predictions_sha256")
    if recorded is not None and recorded != digest:
        raise UserError(
            f"{folder / PREDICTIONS_FILE} is not the file its {RESULTS_FILE} was written with "
            "(its sha256 differs): rerun that fp32 evaluation"
        )
    images = int(results["images"])
    if predictions.ndim != 1 or len(predictions) != images or len(labels) < images:
        raise UserError(
            f"{folder / PREDICTIONS_FILE} holds {len(predictions)} predictions, not the "
            f"{images} its {RESULTS_FILE} records: rerun that fp32 evaluation"
        )
    correct = int((predictions == np.asarray(labels[:images])).sum())
    if results.get("correct_top1") is not None and correct != results["correct_top1"]:
        raise UserError(
            f"{folder / PREDICTIONS_FILE} gets {correct} images right, not the "
            f"{results['correct_top1']} its {RESULTS_FILE} records: rerun that fp32 evaluation"
        )


def _check_agree(found: list[Fp32Reference]) -> None:
    """Several fitting siblings must predict alike on these images, or none is chosen."""
    first = found[0]
    for other in found[1:]:
        differ = int((other.predictions != first.predictions).sum())
        if differ:
            raise UserError(
                f"the fp32 runs {first.dir} and {other.dir} both fit but disagree on {differ} "
                "images: name the reference with --reference DIR"
            )
