"""What each stage's stamp records: every input that can change what the stage makes.

The one place the pipeline digests its own code and asks for library versions, so a test
that pretends either changed patches this module.
"""

from __future__ import annotations

from typing import Any

from core.sources import source_digest
from eval.options import EvalSettings
from eval.results import library_versions
from pipeline.state import RunState


def preprocess_inputs() -> dict[str, Any]:
    """The code that crops: the cache records its recipe and OpenCV itself, so a change to
    this code is what would otherwise reuse older crops."""
    return {"code": source_digest("core", "preprocess")}


def convert_inputs(state: RunState) -> dict[str, Any]:
    """The checkpoint and the converter only: new data does not redo the conversion (its
    report names the images it was verified on)."""
    return {
        "checkpoint_sha256": state.sha256(state.checkpoint),
        "converter": source_digest("convert", "core"),
        "versions": library_versions(),
    }


def evaluate_inputs(settings: EvalSettings, state: RunState) -> dict[str, Any]:
    """What one backend's evaluation depends on."""
    from eval.method.transform import describe_transform, spec_digest

    torch = settings.backend == "torch"
    calibration = None
    if settings.transformed:
        calibration = (state.calibration_list or {}).get("cache_fingerprint", "evaluation cache")
    return {
        "backend": settings.backend,
        "source_sha256": state.sha256(settings.weights if torch else settings.checkpoint),
        "cache": state.cache_fingerprint,
        "limit": settings.limit,
        "device": settings.device,
        "engine": settings.engine if torch else None,
        "precision": settings.precision if torch else None,
        "loadgen": [settings.loadgen, settings.scenario] if settings.loadgen else None,
        # A transform's source file and options (--quantize's: every choice, from --layer-bits'
        # parsed map to --mixed-precision's target), and the images it calibrated on.
        "transform": spec_digest(describe_transform(settings, state.profile)),
        "calibration": calibration,
        # The code that evaluates (quantize: the built-in methods) and the libraries that
        # compute the numbers.
        "code": source_digest("core", "preprocess", "convert", "quantize", "eval"),
        "versions": library_versions(),
    }
