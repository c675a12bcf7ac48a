"""The images whose top-1 a modified model changed from the fp32 run's: fixed (now right,
fp32 wrong), broken (fp32 right, now wrong) or both wrong; flips.csv lists each one."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from core.files import write_text_atomic

FLIPS_FILE = "flips.csv"


def flips(
    files: list[str], labels: np.ndarray, fp32: np.ndarray, method: np.ndarray
) -> tuple[dict, str]:
    """A summary (changed, fixed, broken, net) and the CSV text (file, true label, fp32's,
    the method's, what changed) of the images whose prediction differs."""
    labels, fp32, method = (np.asarray(a, dtype=np.int64) for a in (labels, fp32, method))
    changed = np.flatnonzero(fp32 != method)
    now_right = method[changed] == labels[changed]
    was_right = fp32[changed] == labels[changed]
    kinds = np.where(now_right, "fixed", np.where(was_right, "broken", "both wrong"))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "fp32", "method", "change"])
    for i, kind in zip(changed, kinds, strict=True):
        writer.writerow([files[i], labels[i], fp32[i], method[i], kind])
    fixed, broken = int(now_right.sum()), int((~now_right & was_right).sum())
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
