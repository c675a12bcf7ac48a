"""The evaluation's result (``EvalResult``) and its files: results.json, predictions.npy,
top5.npy. Each is written atomically, results.json last (with the sha256 of the
predictions.npy beside it), so a results.json on disk always sits beside complete
prediction files from the same run; ``load_predictions`` reads them back, checked.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.files import save_npy_atomic, sha256_file, write_text_atomic
from core.records import Record

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.npy"
TOP5_FILE = "top5.npy"


def _version(module: str, *distributions: str) -> str | None:
    """A loaded module's own version, else its installed distribution's (without importing)."""
    if (loaded := getattr(sys.modules.get(module), "__version__", None)) is not None:
        return loaded
    for name in distributions:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return None


def library_versions() -> dict:
    """Versions of the libraries that shape the numbers, without importing TensorFlow."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch", "torch"),
        "tensorflow": _version("tensorflow", "tensorflow", "tensorflow-cpu"),
        "opencv": _version("cv2", "opencv-python-headless", "opencv-python"),
    }


@dataclass
class EvalResult(Record):
    """One evaluation: the fields of results.json, and the top-5 labels behind them.
    ``backend_info`` (``Backend.describe()``) is written at results.json's top level;
    ``loadgen`` only after a LoadGen run; the method's fields (``eval.method``) only for a
    modified model (another precision, a transform)."""

    model: str
    backend: str
    engine: str | None
    images: int
    cache_images: int
    limit: int | None
    top1: float
    top5: float
    correct_top1: int
    correct_top5: int
    reference_top1: float
    label_offset: int
    images_per_second: float
    inference_seconds: float
    wall_seconds: float
    batch_size: int
    device: str
    cache: str
    cache_fingerprint: str | None
    timestamp: str
    versions: dict[str, str | None]
    backend_info: dict[str, Any]
    top5_labels: np.ndarray = field(repr=False)  # int64 (N, 5), best first; not in JSON
    world_size: int = 1
    predictions_sha256: str | None = None  # of predictions.npy, set when it is written
    loadgen: Record | None = None  # eval.loadgen.LoadgenResult
    # A modified model's run, filled by eval.method (results sit below it, so these name
    # only Record): the fp32 run it is judged against (eval.method.reference.Fp32Reference),
    # what was applied (eval.method.transform.TransformRecord), what it calibrated on, the
    # verdict, flips.csv and layers.json; for --quantize, the widths it ran at
    # (eval.method.transform.quantization_section).
    fp32_reference: Record | None = None
    transform: Record | None = None
    quantization: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    mlperf_gate: dict[str, Any] | None = None
    flips: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None  # the layer report's summary; rows in layers.json

    _not_json = ("top5_labels",)
    # Fields written only when they hold something.
    _optional = (
        "loadgen",
        "transform",
        "quantization",
        "calibration",
        "mlperf_gate",
        "flips",
        "layers",
    )

    @property
    def predictions(self) -> np.ndarray:
        """int64 (N,): the predicted label of each image (the top-5's first)."""
        return self.top5_labels[:, 0]

    @property
    def precision(self) -> str:
        return self.backend_info.get("precision", "fp32")

    @property
    def modified(self) -> bool:
        """Not the converted model in fp32: its verdict is against an fp32 run's."""
        return self.precision != "fp32" or self.transform is not None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in super().to_json().items():
            if key == "backend_info":
                data.update(value)  # at the top level, in field order
            else:
                data[key] = value
        for key in self._optional:
            if data[key] is None:
                del data[key]
        if not self.modified:
            del data["fp32_reference"]
        return data

    def table(self, extra_rows: list[tuple[str, str]] = ()) -> str:
        """A small two-column table a person reads at a glance; ``extra_rows`` (a method's,
        ``eval.method.summary``) go at the end."""
        images = f"{self.images:,}"
        if self.cache_images and self.cache_images != self.images:
            images += f" of {self.cache_images:,}"
        device = self.backend_info.get("device_name") or self.device
        rows = [
            ("model", self.model),
            ("backend", f"{self.backend} on {device}"),
            ("images", images),
            ("top-1", f"{self.top1:.3f} %  ({self.correct_top1:,} correct)"),
            ("top-5", f"{self.top5:.3f} %  ({self.correct_top5:,} correct)"),
            ("MLPerf top-1", f"{self.reference_top1:.3f} %  (50,000 images)"),
            ("throughput", f"{self.images_per_second:,.1f} img/s  (inference only)"),
        ]
        if self.loadgen is not None:
            rows.append(("LoadGen", self.loadgen.summary_line()))
        rows += list(extra_rows)
        width = max(len(name) for name, _ in rows)
        rule = "-" * (width + 2 + max(len(value) for _, value in rows))
        return "\n".join([rule, *(f"{name:<{width}}  {value}" for name, value in rows), rule])


def build_result(backend, outcome, cache, cache_dir, settings, world_size: int = 1) -> EvalResult:
    """The result of one evaluation run (``outcome``) of ``backend`` over ``cache``."""
    counter = outcome.counter
    return EvalResult(
        model=backend.profile.name,
        backend=backend.name,
        engine=getattr(backend, "engine", None),
        images=counter.images,
        cache_images=len(cache),
        limit=settings.limit,
        top1=round(counter.top1, 4),
        top5=round(counter.top5, 4),
        correct_top1=counter.correct_top1,
        correct_top5=counter.correct_top5,
        reference_top1=backend.profile.reference_top1,
        label_offset=backend.label_offset,
        images_per_second=round(outcome.images_per_second, 2),
        inference_seconds=round(outcome.inference_seconds, 4),
        wall_seconds=round(outcome.wall_seconds, 4),
        batch_size=settings.batch_size,
        device=backend.device,
        cache=os.fspath(cache_dir),
        cache_fingerprint=getattr(cache, "fingerprint", None),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=library_versions(),
        backend_info=backend.describe(),
        top5_labels=outcome.top5,
        world_size=world_size,
    )


def write_outputs(out_dir: Path, result: EvalResult) -> None:
    """Write predictions.npy, top5.npy, then results.json (naming the predictions' sha256)
    into ``out_dir``."""
    out_dir = Path(out_dir)
    predictions = out_dir / PREDICTIONS_FILE
    save_npy_atomic(predictions, np.asarray(result.predictions, dtype=np.int64))
    result.predictions_sha256 = sha256_file(predictions)
    save_npy_atomic(out_dir / TOP5_FILE, np.asarray(result.top5_labels, dtype=np.int64))
    text = json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n"
    write_text_atomic(out_dir / RESULTS_FILE, text)


def load_predictions(path: str | os.PathLike) -> np.ndarray:
    """Read a predictions.npy file, or the one inside an evaluation output directory."""
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    try:
        predictions = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"cannot read predictions from {path}: {err}") from None
    if not isinstance(predictions, np.ndarray) or not np.issubdtype(predictions.dtype, np.integer):
        kind = getattr(predictions, "dtype", type(predictions).__name__)
        raise UserError(
            f"{path} does not hold predicted labels: expected an integer array, found {kind}"
        )
    return predictions


def read_results(path: str | os.PathLike) -> dict | None:
    """The results.json beside a predictions file (or in an eval output folder) as a dict;
    None when there is none to read."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        results = json.loads((folder / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None
