"""What makes a modified model's run comparable with MLPerf's: its verdict against MLPerf's
accuracy gate, and each image whose prediction changed from the fp32 run's (flips.csv).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from core.files import write_text_atomic
from core.profiles import ModelProfile

FLIPS_FILE = "flips.csv"
# MLPerf's accuracy figures are for the whole ImageNet validation set.
MLPERF_IMAGES = 50_000


def mlperf_gate(profile: ModelProfile, top1: float, fp32_top1: float | None, images: int) -> dict:
    """top-1 relative to the fp32 run's on the same images, against the model's gate
    (ResNet-50 0.99, MobileNet-v1 0.98); on all 50,000 images also against MLPerf's own
    threshold (its reference top-1 times the ratio)."""
    ratio = None if not fp32_top1 else round(top1 / fp32_top1, 6)
    gate = {
        "required_ratio": profile.gate_ratio,
        "fp32_top1": fp32_top1,
        "top1": top1,
        "ratio": ratio,
        "passes": None if ratio is None else ratio >= profile.gate_ratio,
    }
    if images == MLPERF_IMAGES:
        threshold = round(profile.gate_reference_top1 * profile.gate_ratio, 4)
        gate["mlperf_threshold_top1"] = threshold
        gate["passes_mlperf_threshold"] = top1 >= threshold
    return gate


def gate_line(gate: dict) -> str:
    """The verdict as one line a person reads at a glance."""
    required = f"needs >= {gate['required_ratio']:.2f} x fp32"
    if gate["fp32_top1"] == 0:
        return f"unknown: the fp32 run's top-1 is 0 % ({required})"
    if gate["ratio"] is None:
        return f"unknown: no fp32 run of the same weights and cache to compare with ({required})"
    verdict = "PASS" if gate["passes"] else "FAIL"
    line = (
        f"{verdict}  {gate['top1']:.3f} % = {gate['ratio']:.4f} x fp32 {gate['fp32_top1']:.3f} %"
        f" ({required})"
    )
    if "mlperf_threshold_top1" in gate:
        mark = "passes" if gate["passes_mlperf_threshold"] else "misses"
        line += f"; {mark} MLPerf's {gate['mlperf_threshold_top1']:.4f} %"
    return line


def flips(
    files: list[str], labels: np.ndarray, fp32: np.ndarray, method: np.ndarray
) -> tuple[dict, str]:
    """The images whose top-1 differs from fp32's: a summary (changed, fixed, broken, net)
    and the CSV text (file, true label, fp32's, the method's, what changed)."""
    labels, fp32, method = (np.asarray(a, dtype=np.int64) for a in (labels, fp32, method))
    changed = np.flatnonzero(fp32 != method)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "fp32", "method", "change"])
    fixed = broken = 0
    for i in changed:
        if method[i] == labels[i]:
            change, fixed = "fixed", fixed + 1
        elif fp32[i] == labels[i]:
            change, broken = "broken", broken + 1
        else:
            change = "both wrong"
        writer.writerow([files[i], labels[i], fp32[i], method[i], change])
    summary = {
        "file": FLIPS_FILE,
        "changed": int(len(changed)),
        "fixed": fixed,
        "broken": broken,
        "net": fixed - broken,
    }
    return summary, out.getvalue()


def write_flips(out_dir: Path, csv_text: str) -> None:
    write_text_atomic(Path(out_dir) / FLIPS_FILE, csv_text)
