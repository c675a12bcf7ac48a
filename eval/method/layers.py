"""Layer by layer against fp32: where a modified model (int8, a user's transform) departs.

The converter's comparison with TensorFlow (``convert.verify.compare_activations``) with the
fp32 PyTorch model in TensorFlow's place: both models run the same cached images, each
block's output is compared (SQNR in dB, cosine similarity, max |difference|), and the first
block whose SQNR falls below a threshold is named.

    python -m eval layers --model M --weights W.pth (--transform SPEC | --quantize int8)
        --cache-dir C [--images N] [--threshold-db DB] --out DIR
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.files import write_text_atomic
from core.records import Record

log = logging.getLogger(__name__)

LAYERS_FILE = "layers.json"
PLOT_FILE = "layers.png"
# Images compared by default: enough for stable per-layer statistics, a few seconds of work.
DEFAULT_IMAGES = 32
# SQNR below this: the block's error is more than a tenth of its signal (RMS), where
# predictions start to move.
DEFAULT_THRESHOLD_DB = 20.0
LOGITS = ""  # a report point naming the model's own output


def report_points(model) -> list[str]:
    """The module names compared, in forward order ("" = the logits): every block that ends
    in an activation, named the same in the fp32 and the quantized models, as quantize's
    architecture table lists them; a model of neither architecture gives the logits only."""
    from quantize.architectures import find_architecture

    architecture = find_architecture(model)
    return [LOGITS] if architecture is None else architecture.report_points(model)


class ModelRunner:
    """The fp32 model in TensorFlow's place: ``run(nhwc_batch, names)`` gives the named
    modules' outputs (NCHW) and, for "", the logits."""

    def __init__(self, model):
        self.model = model.eval()
        self._modules = dict(model.named_modules())

    def run(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        import torch

        from convert.verify import _keep_output

        outputs: dict[str, Any] = {}
        handles = [
            self._modules[name].register_forward_hook(partial(_keep_output, outputs, name))
            for name in names
            if name
        ]
        try:
            with torch.no_grad():
                nchw = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
                logits = self.model(nchw)
        finally:
            for handle in handles:
                handle.remove()
        return [(outputs[name] if name else logits).numpy() for name in names]


@dataclass
class LayerReport(Record):
    """results of ``compare_with_fp32``, written as layers.json."""

    method: str
    images: int
    source: str
    threshold_db: float
    first_below_threshold: str | None  # the first block whose SQNR is under the threshold
    layers: list  # convert.verify.LayerDiff rows, in forward order
    skipped: list[str] = field(default_factory=list)  # points the modified model lacks

    def summary_line(self) -> str:
        if self.first_below_threshold is None:
            return f"every block at or above {self.threshold_db:g} dB SQNR"
        row = next(r for r in self.layers if r.layer == self.first_below_threshold)
        return (
            f"first block below {self.threshold_db:g} dB SQNR: {row.layer} "
            f"({row.sqnr_db:.1f} dB, cosine {row.cosine:.4f})"
        )

    def table(self) -> str:
        header = ("layer", "shape", "SQNR dB", "cosine", "max|diff|")
        rows = [header] + [
            (
                r.layer,
                "x".join(map(str, r.shape)),
                f"{r.sqnr_db:.1f}",
                f"{r.cosine:.5f}",
                f"{r.max_abs_diff:.3g}",
            )
            for r in self.layers
        ]
        widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, self.summary_line()])


def compare_with_fp32(
    fp32_model,
    modified_model,
    images: np.ndarray,
    *,
    method: str,
    source: str,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    quiet: bool = False,
) -> LayerReport:
    """Every report point of ``modified_model`` against ``fp32_model`` on NHWC float32
    ``images`` (MLPerf-normalised), through the converter's comparison."""
    from convert.verify import compare_activations
    from convert.walker import LayerTensor

    present = dict(modified_model.named_modules())
    points = report_points(fp32_model)
    kept = [name for name in points if not name or name in present]
    layer_tensors = [LayerTensor(name or "logits", name, name) for name in kept]
    rows, _ = compare_activations(
        modified_model, ModelRunner(fp32_model), layer_tensors, "NCHW", images, quiet=quiet
    )
    below = next((r.layer for r in rows if (r.sqnr_db or 0.0) < threshold_db), None)
    return LayerReport(
        method=method,
        images=len(images),
        source=source,
        threshold_db=threshold_db,
        first_below_threshold=below,
        layers=rows,
        skipped=[name for name in points if name not in kept],
    )


def write_report(out_dir: Path, report: LayerReport) -> None:
    """layers.json, and layers.png when matplotlib is installed (an optional extra)."""
    write_text_atomic(Path(out_dir) / LAYERS_FILE, json.dumps(report.to_json(), indent=2) + "\n")
    try:
        import matplotlib
    except ImportError:
        log.info("matplotlib is not installed: no %s", PLOT_FILE)
        return
    matplotlib.use("Agg")
    _plot(out_dir, report)


def _plot(out_dir: Path, report: LayerReport) -> None:
    import matplotlib.pyplot as plt

    from core.files import atomic_path

    names = [r.layer for r in report.layers]
    figure, axis = plt.subplots(figsize=(max(6, 0.3 * len(names)), 4))
    axis.plot(range(len(names)), [r.sqnr_db for r in report.layers], marker="o")
    axis.axhline(report.threshold_db, color="red", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_ylabel("SQNR vs fp32 (dB)")
    axis.set_title(f"{report.method}: {report.images} images")
    figure.tight_layout()
    with atomic_path(Path(out_dir) / PLOT_FILE) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def layer_report_for(
    profile, weights, settings, cache, calibration, images: int, threshold_db: float, quiet: bool
) -> LayerReport:
    """Load ``weights``, apply ``settings``' transform (calibrated on ``calibration``) and
    compare it with the untouched fp32 model on the first ``images`` cached crops."""
    from convert.api import load_checkpoint
    from eval.method.transform import apply_transform, describe_transform, load_transform

    fp32_model, _ = load_checkpoint(weights, expected_model=profile.name)
    candidate, _ = load_checkpoint(weights, expected_model=profile.name)
    transform = describe_transform(settings, profile)
    function = load_transform(settings, transform)
    modified = apply_transform(function, transform, candidate, calibration)
    count = min(images, len(cache))
    return compare_with_fp32(
        fp32_model,
        modified,
        cache.normalized(0, count),
        method=transform.spec,
        source=f"the first {count} images of {cache.cache_dir}",
        threshold_db=threshold_db,
        quiet=quiet,
    )


def report_on_run(
    out_dir: Path, backend, cache, cache_dir, method: str, quiet: bool
) -> dict | None:
    """layers.json for an evaluation: the modified module ``backend`` just evaluated against
    its fp32 weights, block by block, on the first cached images (on the CPU, where both
    models can run); the summary results.json keeps (None off the CPU)."""
    from convert.api import load_checkpoint

    if backend.torch_device.type != "cpu":
        log.info("layers.json is made on the CPU only: run python -m eval layers there")
        (out_dir / LAYERS_FILE).unlink(missing_ok=True)  # an older run's would mislead
        return None
    fp32_model, record = load_checkpoint(backend.weights_path, expected_model=backend.profile.name)
    if record["file_sha256"] != backend.weights_sha256:  # replaced since it was evaluated
        raise UserError(
            f"{backend.weights_path} changed during the evaluation: its fp32 weights are not "
            "the ones the method was applied to; rerun"
        )
    count = min(DEFAULT_IMAGES, len(cache))
    report = compare_with_fp32(
        fp32_model,
        backend.module,
        cache.normalized(0, count),
        method=method,
        source=f"the first {count} images of {cache_dir}",
        quiet=quiet,
    )
    write_report(out_dir, report)
    return {
        "file": LAYERS_FILE,
        "first_below_threshold": report.first_below_threshold,
        "summary": report.summary_line(),
    }
