"""The evaluation's outputs: results.json, predictions.npy, top5.npy and the final table.

Every file is written through ``atomic_path``, and results.json last, so a results.json
on disk always sits beside complete prediction files from the same run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from core.files import save_npy_atomic, write_text_atomic

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.npy"
TOP5_FILE = "top5.npy"


def _distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict:
    """Versions of the libraries that shape the numbers, without importing TensorFlow."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    torch = sys.modules.get("torch")
    versions["torch"] = torch.__version__ if torch is not None else _distribution_version("torch")
    tf = sys.modules.get("tensorflow")
    versions["tensorflow"] = (
        tf.__version__
        if tf is not None and hasattr(tf, "__version__")
        else _distribution_version("tensorflow", "tensorflow-cpu")
    )
    cv2 = sys.modules.get("cv2")
    versions["opencv"] = (
        cv2.__version__
        if cv2 is not None and hasattr(cv2, "__version__")
        else _distribution_version("opencv-python-headless", "opencv-python")
    )
    return versions


def build_results(backend, outcome, *, cache, cache_dir, batch_size: int, limit) -> dict:
    """The results.json dict for one evaluation run."""
    profile = backend.profile
    counter = outcome.counter
    results = {
        "model": profile.name,
        "backend": backend.name,
        "engine": getattr(backend, "engine", None),
        "images": counter.images,
        "cache_images": len(cache),
        "limit": limit,
        "top1": round(counter.top1, 4),
        "top5": round(counter.top5, 4),
        "correct_top1": counter.correct_top1,
        "correct_top5": counter.correct_top5,
        "reference_top1": profile.reference_top1,
        "label_offset": backend.label_offset,
        "images_per_second": round(outcome.images_per_second, 2),
        "inference_seconds": round(outcome.inference_seconds, 4),
        "wall_seconds": round(outcome.wall_seconds, 4),
        "batch_size": batch_size,
        "device": backend.device,
        "cache": os.fspath(cache_dir),
        "cache_fingerprint": getattr(cache, "fingerprint", None),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    results.update(backend.describe())
    return results


def write_outputs(out_dir: Path, results: dict, outcome) -> dict[str, Path]:
    """Write predictions.npy, top5.npy, then results.json into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {
        "predictions": out_dir / PREDICTIONS_FILE,
        "top5": out_dir / TOP5_FILE,
        "results": out_dir / RESULTS_FILE,
    }
    save_npy_atomic(paths["predictions"], np.asarray(outcome.predictions, dtype=np.int64))
    save_npy_atomic(paths["top5"], np.asarray(outcome.top5, dtype=np.int64))
    write_text_atomic(paths["results"], json.dumps(results, indent=2, sort_keys=False) + "\n")
    return paths


def format_table(results: dict) -> str:
    """A small two-column table a person reads at a glance."""
    images = f"{results['images']:,}"
    if results.get("cache_images") and results["cache_images"] != results["images"]:
        images += f" of {results['cache_images']:,}"
    rows = [
        ("model", results["model"]),
        ("backend", f"{results['backend']} on {results.get('device_name') or results['device']}"),
        ("images", images),
        ("top-1", f"{results['top1']:.3f} %  ({results['correct_top1']:,} correct)"),
        ("top-5", f"{results['top5']:.3f} %  ({results['correct_top5']:,} correct)"),
        ("MLPerf top-1", f"{results['reference_top1']:.3f} %  (50,000 images)"),
        ("throughput", f"{results['images_per_second']:,.1f} img/s  (inference only)"),
    ]
    loadgen = results.get("loadgen")
    if loadgen and loadgen.get("accuracy_line"):
        rows.append(("LoadGen", loadgen["accuracy_line"]))
    elif loadgen and loadgen.get("samples_per_second") is not None:
        verdict = "VALID" if loadgen.get("valid") else "INVALID"
        rows.append(
            (
                "LoadGen",
                f"{loadgen['scenario']} {loadgen['samples_per_second']:,.1f} samples/s ({verdict})",
            )
        )
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 2 + max(len(value) for _, value in rows))
    lines = [rule] + [f"{name:<{width}}  {value}" for name, value in rows] + [rule]
    return "\n".join(lines)
