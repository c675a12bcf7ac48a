"""A modified model's rows in a summary table, from its results.json: what was applied,
what it calibrated on, how it compares with its fp32 reference. ``python -m eval`` and
``python -m pipeline.run`` both print these rows, so the two summaries say the same."""

from __future__ import annotations

from typing import Any

from eval.method.gate import gate_line


def method_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows for an evaluation's results.json (none for an fp32 run)."""
    rows = []
    if transform := results.get("transform"):
        rows.append(("method", transform["spec"]))
    elif results.get("precision", "fp32") != "fp32":
        rows.append(("method", f"precision {results['precision']}"))
    if calibration := results.get("calibration"):
        note = calibration["note"] or "MLPerf's calibration list"
        rows.append(("calibration", f"{calibration['images']} images ({note})"))
    reference = results.get("fp32_reference") or {}
    if reference.get("dir"):
        rows.append(("fp32 reference", str(reference["dir"])))
    if reference.get("equal_share") is not None:
        rows.append(("same as fp32", f"{100 * reference['equal_share']:.3f} % of images"))
    if gate := results.get("mlperf_gate"):
        rows.append(("MLPerf gate", gate_line(gate)))
    if flips := results.get("flips"):
        where = f", see {flips['file']}" if flips.get("file") else ""
        rows.append(
            (
                "flips vs fp32",
                f"{flips['changed']} changed: {flips['fixed']} fixed, {flips['broken']} broken "
                f"(net {flips['net']:+d}){where}",
            )
        )
    if layers := results.get("layers"):
        rows.append(("layers vs fp32", f"{layers['summary']}, see {layers['file']}"))
    return rows
