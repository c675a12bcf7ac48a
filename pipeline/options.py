"""What one ``python -m pipeline.run`` is asked to do: the pipeline's own choices, beside
the settings every evaluation of the run shares (``eval.options.EvalSettings``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from eval.options import EvalSettings

STAGES = ("fetch", "preprocess", "convert", "evaluate")
# RunOptions fields that no command-line option of the same name fills.
_BUILT_FIELDS = ("evaluation", "batch_size_given")


@dataclass
class RunOptions:
    """The pipeline's options; ``evaluation`` holds the evaluation's, each defined once.

    ``evaluation`` owns --limit (the cache holds the first N listed images, and each
    evaluation records N as it always has), --quiet and --wait (every stage follows them).
    Its ``backend`` is set per run by ``pipeline.plan``; ``backend`` here is --backend.
    """

    model_name: str
    work_dir: Path
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    # Whether --batch-size was given: ``evaluation.batch_size`` is the device's default
    # when it was not, and the TensorFlow reference, on the CPU, then takes the CPU's.
    batch_size_given: bool = False
    checkpoint_source: str | None = None  # --checkpoint: a .pb / .tgz path or URL
    sha256: str | None = None
    data_dir: Path | None = None
    val_map: Path | None = None
    workers: int | None = None
    skip_bad: bool = False
    backend: str = "torch"  # one of eval.options.BACKENDS, or "both"
    stages: tuple[str, ...] = STAGES
    force: bool = False
    calibration_list: Path | None = None  # a list file, or "mlperf" for MLPerf's own

    @classmethod
    def from_options(cls, options: argparse.Namespace) -> RunOptions:
        """From parsed command-line options: each pipeline field from the option of the
        same name, ``evaluation`` from ``EvalSettings.from_options``."""
        own = {f.name: getattr(options, f.name) for f in fields(cls) if f.name not in _BUILT_FIELDS}
        return cls(
            **own,
            evaluation=EvalSettings.from_options(options),
            batch_size_given=options.batch_size is not None,
        )

    @property
    def quiet(self) -> bool:
        """--quiet, for every stage."""
        return self.evaluation.quiet

    @property
    def wait(self) -> bool:
        """--wait: every stage waits for another run's lock instead of refusing."""
        return self.evaluation.wait
