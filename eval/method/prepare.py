"""A user's method as one evaluation sees it: prepared before any output is written (its
transform file, its calibration images, its fp32 reference, each refused in one sentence
when unusable), applied once to the loaded fp32 module (``modify``), and judged once the
predictions are in (``judge``: the reference, MLPerf's gate, flips.csv, layers.json).

The evaluation loop knows only ``modify``; ``eval.evaluate`` calls ``judge`` before it
writes results.json, so a results.json always holds the verdict of the predictions beside
it. A non-fp32 precision alone (tf32, bf16) is a method with nothing to apply.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.files import sha256_file
from core.profiles import ModelProfile
from eval.method.calibration import CalibrationBatches, calibration_set
from eval.method.flips import FLIPS_FILE, write_flips
from eval.method.gate import mlperf_gate
from eval.method.layers import report_on_run
from eval.method.reference import Fp32Reference, RunIdentity, find_reference
from eval.method.transform import (
    TransformRecord,
    apply_transform,
    describe_transform,
    load_transform,
    quantization_section,
    spec_digest,
)
from eval.method.verdict import judge_predictions

log = logging.getLogger(__name__)

# Beside the evaluation folders (W/<model>/ for pipeline.run, --out's parent for python -m
# eval): where --quantize caches its calibrations, keyed by the quantize package itself, so
# a rerun that changes only how it is evaluated does not calibrate again.
CALIBRATION_STORE = "calibrations"


@dataclass
class PreparedMethod:
    """One evaluation's method, checked and ready (``prepare_method`` builds it)."""

    profile: ModelProfile
    settings: Any  # eval.options.EvalSettings
    cache: Any  # the evaluated cache (preprocess.PreprocessedCache or alike)
    cache_dir: Any
    transform: TransformRecord | None = None
    calibration: CalibrationBatches | None = None
    calibration_record: dict | None = None
    reference: Fp32Reference | None = None
    store: Path | None = None  # --quantize's calibration cache (CALIBRATION_STORE)

    @property
    def modify(self) -> Callable | None:
        """What ``make_backend`` applies to the loaded fp32 module (None: nothing)."""
        return self._apply if self.transform is not None else None

    @property
    def digest(self) -> str | None:
        """What the predictions depend on beyond the weights and cache: the transform (its
        source and options) and the calibration images; in the resume journal's key."""
        if self.transform is None:
            return None
        calibration = (self.calibration_record or {}).get("names_sha256")
        return hashlib.sha256(f"{spec_digest(self.transform)}\0{calibration}".encode()).hexdigest()

    def _apply(self, module):
        function = load_transform(self.settings, self.transform, self.store)
        return apply_transform(function, self.transform, module, self.calibration)

    def judge(self, result, backend, out_dir: Path | None) -> None:
        """Fill the method's fields of ``result`` (an ``eval.results.EvalResult``) and write
        flips.csv and layers.json into ``out_dir``; call while ``backend`` is open."""
        result.transform = self.transform
        result.calibration = self.calibration_record
        if self.settings.quantize is not None:
            result.quantization = quantization_section(self.transform)
        if self.transform is not None:
            result.backend_info.setdefault("engine_notes", []).insert(
                0, f"model: {self.transform.spec}"
            )
            if out_dir is not None:
                result.layers = report_on_run(
                    out_dir, backend, self.cache, self.cache_dir, self.transform.spec,
                    self.settings.quiet,
                )  # fmt: skip
        self._compare(result, backend, out_dir)

    def _compare(self, result, backend, out_dir: Path | None) -> None:
        """The verdict against the fp32 reference (unknown without one), and flips.csv."""
        reference, images = self.reference, result.images
        if reference is None:
            result.mlperf_gate = mlperf_gate(self.profile, result.correct_top1, None, images)
            if out_dir is not None:
                (out_dir / FLIPS_FILE).unlink(missing_ok=True)  # an older run's would mislead
            return
        if reference.weights_sha256 != backend.weights_sha256:  # replaced during the run
            raise UserError(
                f"{backend.weights_path} changed during the evaluation: the fp32 reference "
                f"{reference.dir} is of other weights than the ones evaluated; rerun"
            )
        labels = np.asarray(self.cache.labels[:images], dtype=np.int64)
        files = list(self.cache.files[:images])
        verdict = judge_predictions(
            self.profile, labels, reference.predictions, result.predictions, files
        )
        reference.top1 = verdict.gate["fp32_top1"]
        reference.equal_predictions = verdict.equal_predictions
        reference.equal_share = verdict.equal_share
        result.fp32_reference, result.mlperf_gate = reference, verdict.gate
        result.flips = verdict.flips
        if out_dir is not None:
            write_flips(out_dir, verdict.flips_csv)
        else:
            result.flips = {**verdict.flips, "file": None}


def prepare_method(
    profile: ModelProfile,
    cache,
    cache_dir,
    count: int,
    settings,
    out_dir: Path | None,
    judged: bool = True,
) -> PreparedMethod | None:
    """``settings``' method for an evaluation of ``cache``'s first ``count`` images into
    ``out_dir`` (None: no output), checked before any work; None for the converted model
    itself in fp32. ``judged`` False (a torchrun rank that does not report): no reference."""
    if not settings.modified:
        return None
    method = PreparedMethod(profile, settings, cache, cache_dir)
    if settings.transformed:  # its file and its calibration images
        method.transform = describe_transform(settings, profile)
        if settings.quantize is not None and out_dir is not None:
            method.store = Path(out_dir).parent / CALIBRATION_STORE
        method.calibration, method.calibration_record = calibration_set(
            profile, cache, settings.calibration_cache
        )
    if judged:
        identity = RunIdentity(
            model=profile.name,
            cache_fingerprint=getattr(cache, "fingerprint", None),
            weights_sha256=sha256_file(settings.weights),
            images=count,
        )
        named = None if settings.reference is None else Path(settings.reference)
        out = None if out_dir is None else Path(out_dir)
        method.reference = find_reference(identity, cache.labels, out, named)
    return method
