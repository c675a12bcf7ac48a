"""A pipeline run's outcome: W/<model>/results.json and the summary it prints."""

from __future__ import annotations

import json
from typing import Any

from core.files import write_text_atomic
from pipeline.state import RunState


def write_summary(state: RunState) -> None:
    combined = combined_results(state)
    write_text_atomic(
        state.model_dir / "results.json", json.dumps(combined, indent=2, sort_keys=True) + "\n"
    )
    print(format_summary(combined, state))


def combined_results(state: RunState) -> dict[str, Any]:
    """W/<model>/results.json: the primary run's keys (the modified model's when there is
    one, else PyTorch's, else TensorFlow's) plus the other runs' figures."""
    primary = next(key for key in ("method", "torch", "tf") if key in state.results)
    combined = dict(state.results[primary])
    if "method" in state.results:
        combined["fp32_top1"] = state.results["torch"]["top1"]
        combined["calibration_list"] = state.calibration_list
    if "torch" in state.results and "tf" in state.results:
        torch_res, tf_res = state.results["torch"], state.results["tf"]
        for key in ("top1", "top5", "images_per_second"):
            combined[f"tf_{key}"] = tf_res[key]
        combined["top1_torch_minus_tf"] = round(torch_res["top1"] - tf_res["top1"], 6)
        combined["prediction_agreement"] = _prediction_agreement(state)
    loadgen = combined.get("loadgen") or {}
    if loadgen.get("accuracy_line"):
        combined["loadgen_accuracy_line"] = loadgen["accuracy_line"]
        combined["loadgen_top1"] = loadgen["top1"]
    combined["difference_from_reference"] = round(
        combined["top1"] - state.profile.reference_top1, 6
    )
    combined["dataset"] = "built-in sample (not ImageNet)" if state.using_sample else "user data"
    combined["stages"] = state.ran
    return combined


def _prediction_agreement(state: RunState) -> float:
    from eval.compare import compare_predictions
    from eval.results import load_predictions

    torch_run = load_predictions(state.model_dir / "eval-torch")  # the fp32 run
    tf_run = load_predictions(state.model_dir / "eval-tf")
    return compare_predictions(torch_run, tf_run)["percent"]


def format_summary(combined: dict[str, Any], state: RunState) -> str:
    torch_top1 = state.results.get("torch", {}).get("top1")
    tf_top1 = state.results.get("tf", {}).get("top1")
    rows = [
        ("model", combined["model"]),
        ("images", str(combined["images"])),
        ("top-1 PyTorch", _pct(torch_top1)),
        ("top-1 TensorFlow", _pct(tf_top1)),
        ("MLPerf reference", _pct(state.profile.reference_top1)),
        ("difference", f"{combined['top1'] - state.profile.reference_top1:+.3f} points"),
    ]
    if "method" in state.results:
        rows += _method_rows(state.results["method"])
    if combined.get("loadgen"):
        from eval.loadgen import LoadgenResult

        rows.append(("MLPerf LoadGen", LoadgenResult.from_json(combined["loadgen"]).summary_line()))
    if "prediction_agreement" in combined:
        rows.append(("PyTorch = TF", f"{combined['prediction_agreement']:.3f} % of images"))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if state.using_sample:
        from pipeline.sample import SAMPLE_DESCRIPTION

        lines.append(f"  note: {SAMPLE_DESCRIPTION}")
    stages = ", ".join(f"{s} {what}" for s, what in state.ran.items())
    lines.append(f"  stages: {stages}")
    return "\n".join(lines)


def _method_rows(method: dict[str, Any]) -> list[tuple[str, str]]:
    """The modified model's top-1 and speed, then the rows ``python -m eval`` prints for it."""
    from eval.method.summary import method_rows

    top1 = f"{_pct(method['top1'])}  ({method['images_per_second']:,.1f} img/s)"
    rows = method_rows(method)
    return rows[:1] + [("top-1 method", top1)] + rows[1:]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} %"
