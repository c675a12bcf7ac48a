"""Each layer alone at its width: what quantizing it costs the logits, on calibration images.

Every layer of the converted fp32 model is quantized alone under a simulated ``--quantize
wXaY`` (its weights and the activation it reads; the rest stays fp32) with the recipe the
evaluation would use, and the logits are compared with fp32's: their SQNR in dB and the
share of images whose top-1 answer changes (``quantize.model.layer_sensitivity``).

    python -m eval layers --sensitivity --model M --weights W.pth --cache-dir C
        --quantize wXaY [--layer-bits SPEC] [--rounding R] [--calibration-cache DIR] --out DIR

MLPerf lets a submission tune on its calibration list only, so the costs are measured on
the calibration images, never on evaluation images: ``--calibration-cache`` (MLPerf's list)
or, without it, the first images of ``--cache-dir``, flagged as not MLPerf's list.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import atomic_path, write_text_atomic
from core.records import Record

log = logging.getLogger(__name__)

SENSITIVITY_FILE = "sensitivity.json"
SENSITIVITY_PLOT = "sensitivity.png"
MOST_DAMAGING = 5  # layers ranked in the table, the chart and the JSON
IMAGES_RULE = (
    "measured on the calibration images only, never on evaluation images (MLPerf: a "
    "submission may tune on its calibration list, not on the validation images it is scored on)"
)
INFINITE_SQNR_NOTE = (
    "logits_sqnr_db is null where quantizing the layer left the logits unchanged "
    "(infinite SQNR; JSON has no infinity)"
)


@dataclass
class SensitivityReport(Record):
    """What ``sensitivity_report_for`` measured, written as sensitivity.json."""

    model: str
    scheme: str
    layer_bits: dict | None  # the --layer-bits map as parsed (None: the scheme everywhere)
    weights: dict  # file, sha256
    images: dict  # the calibration set: source, count, names' sha256, MLPerf's list or not
    recipe: dict  # the calibration's quantization_record (rounding, techniques, ...)
    layers: list  # quantize.sensitivity.LayerCost rows, in forward order

    def ranked(self) -> list[str]:
        """The MOST_DAMAGING layers with the lowest finite logits SQNR, worst first (ties in
        forward order); a layer that leaves the logits unchanged is never ranked."""
        scored = [(c.logits_sqnr_db, i) for i, c in enumerate(self.layers)]
        worst = sorted(item for item in scored if math.isfinite(item[0]))[:MOST_DAMAGING]
        return [self.layers[i].layer for _, i in worst]

    def summary_line(self) -> str:
        ranked = self.ranked()
        changing = sum(c.top1_changed_share > 0 for c in self.layers)
        count = self.images["count"]
        tail = (
            f"{changing} of {len(self.layers)} layers change some top-1 answers "
            f"on {count} calibration images"
        )
        if not ranked:
            return f"no layer changes the logits when quantized alone; {tail}"
        worst = next(c for c in self.layers if c.layer == ranked[0])
        return (
            f"most sensitive: {worst.layer} ({worst.logits_sqnr_db:.1f} dB logits SQNR, "
            f"top-1 changed on {100 * worst.top1_changed_share:.1f} %); {tail}"
        )

    def table(self) -> str:
        rank = {name: i + 1 for i, name in enumerate(self.ranked())}
        header = ("rank", "layer", "wXaY", "parameters", "logits SQNR dB", "top-1 changed %")
        rows = [header] + [
            (
                str(rank.get(c.layer, "")),
                c.layer,
                _bits_name(c.bits),
                f"{c.parameters:,}",
                "inf" if math.isinf(c.logits_sqnr_db) else f"{c.logits_sqnr_db:.1f}",
                f"{100 * c.top1_changed_share:.1f}",
            )
            for c in self.layers
        ]
        widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, self.summary_line()])

    def to_json(self) -> dict[str, Any]:
        rank = {name: i + 1 for i, name in enumerate(self.ranked())}
        document = super().to_json()
        document["layers"] = [_row(cost, rank.get(cost.layer)) for cost in self.layers]
        document["most_damaging"] = self.ranked()
        document["summary"] = self.summary_line()
        document["note"] = INFINITE_SQNR_NOTE
        return _finite(document)


def _bits_name(bits) -> str:
    weight_bits, activation_bits = bits
    return f"w{weight_bits}a{activation_bits}"


def _row(cost, rank: int | None) -> dict[str, Any]:
    sqnr = cost.logits_sqnr_db
    return {
        "layer": cost.layer,
        "bits": _bits_name(cost.bits),
        "weight_bits": cost.bits[0],
        "activation_bits": cost.bits[1],
        "parameters": cost.parameters,
        "logits_sqnr_db": sqnr if math.isfinite(sqnr) else None,
        "top1_changed_share": cost.top1_changed_share,
        "rank": rank,  # 1 = the most damaging by logits SQNR; None outside the worst five
    }


def _finite(value):
    """``value`` with every non-finite float as None: JSON has no infinity or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def check_sensitivity_settings(settings) -> None:
    """--sensitivity's method: a simulated --quantize wXaY, without a plan of its own; one
    sentence before any work."""
    from quantize.scheme import parse_scheme

    if settings.transform is not None:
        raise UserError(
            "--sensitivity quantizes each layer with the quantize package: give --quantize "
            "wXaY (such as w4a8), not --transform"
        )
    if settings.quantize is None:
        raise UserError("--sensitivity needs a simulated --quantize wXaY, such as w4a8")
    if not parse_scheme(settings.quantize).simulated:
        raise UserError(
            "--sensitivity needs a simulated --quantize wXaY (such as w8a8): int8 runs the "
            "int8 kernels with every layer at 8 bits, where no layer can be quantized alone"
        )
    if settings.mixed_precision or settings.bit_budget is not None:
        raise UserError(
            "--sensitivity measures the widths given by --quantize and --layer-bits, and "
            "--mixed-precision plans its own: leave out --mixed-precision and --bit-budget"
        )


def sensitivity_report_for(
    profile, weights, settings, calibration, calibration_record: dict, quiet: bool
) -> SensitivityReport:
    """Load ``weights`` and quantize each layer alone under ``settings``' --quantize
    choices, calibrated and measured on ``calibration`` (``calibration_set``'s batches)."""
    from convert.api import load_checkpoint
    from eval.method.transform import quantize_options
    from quantize.model import layer_sensitivity

    model, record = load_checkpoint(weights, expected_model=profile.name)
    options = quantize_options(settings, profile)
    costs, quantization = layer_sensitivity(
        model,
        calibration,
        options["scheme"],
        method=options["calibration_method"],
        equalize=options["equalize"],
        bias_correction=options["bias_correction"],
        rounding=options["rounding"],
        layer_bits=options["layer_bits"],
        device=options["device"],
        quiet=quiet,
    )
    return SensitivityReport(
        model=profile.name,
        scheme=options["scheme"],
        layer_bits=options["layer_bits"],
        weights={"file": str(weights), "sha256": record["file_sha256"]},
        images=_images_section(calibration_record, quantization),
        recipe=quantization,
        layers=list(costs),
    )


def _images_section(calibration_record: dict, quantization: dict) -> dict[str, Any]:
    """Where the images came from: always the calibration set, with MLPerf's rule."""
    return {
        "set": "calibration",
        "source": f"calibration images: {calibration_record['source']}",
        "count": quantization.get("calibration_images", calibration_record["images"]),
        "names_sha256": calibration_record["names_sha256"],
        "mlperf_list": calibration_record["mlperf_list"],
        "note": calibration_record["note"],
        "rule": IMAGES_RULE,
    }


def write_sensitivity(out_dir: Path, report: SensitivityReport) -> None:
    """sensitivity.json, and sensitivity.png when matplotlib is installed (an optional
    extra): both made in memory first, each file then written whole or not at all."""
    out_dir = Path(out_dir)
    document = json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n"
    picture = _plot(report)
    write_text_atomic(out_dir / SENSITIVITY_FILE, document)
    if picture is None:
        (out_dir / SENSITIVITY_PLOT).unlink(missing_ok=True)  # an older run's would mislead
        return
    with atomic_path(out_dir / SENSITIVITY_PLOT) as tmp:
        tmp.write_bytes(picture)


def _plot(report: SensitivityReport) -> bytes | None:
    """The bar chart of each layer's logits SQNR as PNG bytes (None without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        log.info("matplotlib is not installed: no %s", SENSITIVITY_PLOT)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = set(report.ranked())
    names = [c.layer for c in report.layers]
    heights = [c.logits_sqnr_db if math.isfinite(c.logits_sqnr_db) else 0.0 for c in report.layers]
    figure, axis = plt.subplots(figsize=(max(6, 0.3 * len(names)), 4))
    try:
        axis.bar(
            range(len(names)),
            heights,
            color=["tab:red" if name in ranked else "tab:blue" for name in names],
        )
        axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        axis.set_ylabel("logits SQNR vs fp32 (dB)")
        axis.set_title(
            f"{report.model} {report.scheme}, each layer alone on {report.images['count']} "
            f"calibration images (red: the {MOST_DAMAGING} most damaging)",
            fontsize=9,
        )
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(figure)
    return buffer.getvalue()
