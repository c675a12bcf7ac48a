"""The calibration cache a modified model (--transform, --quantize) calibrates on."""

from __future__ import annotations

from pathlib import Path

from pipeline.options import RunOptions
from pipeline.state import RunState


def prepare_calibration(opts: RunOptions, state: RunState, data_dir: Path, recrop: bool) -> None:
    """Build W/<model>/calibration/cache from --calibration-list, else from MLPerf's list
    when the data dir holds its images (real ImageNet does), else none: the method then
    calibrates on the first images of the evaluation cache, which the results flag as not
    MLPerf's list."""
    from preprocess import build_cache
    from preprocess.calibration import (
        MLPERF_LIST_WORD,
        MissingCalibrationImages,
        load_calibration_list,
    )

    if opts.calibration_list is None and state.using_sample:
        return
    source = MLPERF_LIST_WORD if opts.calibration_list is None else opts.calibration_list
    listed = load_calibration_list(source)  # what the results record of it
    folder = state.model_dir / "calibration"
    try:
        summary = build_cache(
            opts.model_name,
            data_dir,
            folder / "cache",
            val_map=opts.val_map,
            calibration_list=source,
            workers=opts.workers,
            quiet=opts.quiet,
            force=recrop,
            wait=opts.wait,
        )
    except MissingCalibrationImages:
        if opts.calibration_list is not None:
            raise
        return  # not real ImageNet: the first evaluation images, flagged as such
    state.calibration_cache = folder / "cache"
    state.calibration_list = {
        "file": str(listed.path),
        "sha256": listed.sha256,
        "images": len(listed.names),
        "mlperf_list": listed.is_mlperf,
        "cache_fingerprint": summary.fingerprint,
    }
