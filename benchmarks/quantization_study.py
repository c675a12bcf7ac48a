"""How many images keep fp32's top-1 after post-training quantization: this project's
``--quantize`` (each calibration method, with and without cross-layer equalization and bias
correction) side by side with ONNX Runtime's ``quantize_static`` (per-channel int8 weights,
uint8 activations, QDQ; MinMax, Percentile and Entropy calibration) on the same model, the
same calibration images and the same held-out images.

Images are real photographs (the project's sample JPEGs and scikit-image's photos), cut
into random crops and rescalings; each is labelled by the fp32 model, so a method's score
is the share of images on which it keeps fp32's answer. The model is a converted frozen
graph (``--checkpoint``, e.g. the real MobileNet-v1) or, without one, the test suite's
realistic stand-in (random convolutions, batch norm measured on the photos, TF-like uneven
depthwise channels, a head that tells the photos apart).

    python -m benchmarks.quantization_study --model mobilenet_v1 --json work/bench/quant.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import cpu_description
from benchmarks.onnx_int8 import ORT_METHODS, cpu_session, quantize_onnx
from core.cli import configure_logging, positive_int, renamed_options, run_cli
from core.errors import first_line
from core.files import write_text_atomic
from core.profiles import MODEL_NAMES, get_profile

log = logging.getLogger("quantization_study")

TECHNIQUES = {  # name -> (equalize, bias_correction)
    "per-channel only": (False, False),
    "+ bias correction": (False, True),
    "+ cross-layer equalization": (True, False),
    "+ CLE + bias correction": (True, True),
}


@functools.cache
def fp32_model(model_name: str, checkpoint: str | None, seed: int):
    """The converted ``checkpoint`` (converted once, whatever the seed), or the tests'
    realistic stand-in model for ``seed``."""
    if checkpoint is None:
        from fixtures import photo_models as models

        builder = models.mobilenet if model_name == "mobilenet_v1" else models.resnet
        return builder(seed), "stand-in: random weights, batch norm measured on photos"
    if seed != 0:  # one converted model serves every seed
        return fp32_model(model_name, checkpoint, 0)
    from convert import convert_checkpoint, load_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        pth = Path(folder) / "model.pth"
        convert_checkpoint(model_name, checkpoint, pth, verify=False, quiet=True)
        return load_checkpoint(pth, expected_model=model_name)[0], f"converted {checkpoint}"


def photo_crops(model_name: str, count: int, seed: int) -> torch.Tensor:
    """MLPerf-normalised NCHW crops and rescalings of real photographs."""
    from fixtures import photo_models as models

    return models.crops(count, seed, "mobilenet" if model_name == "mobilenet_v1" else "resnet")


def all_logits(run, images: torch.Tensor, batch: int = 16) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [np.asarray(run(images[i : i + batch])) for i in range(0, len(images), batch)]
        ).astype(np.float64)


def agreement(logits: np.ndarray, reference: np.ndarray) -> dict:
    """The share of images keeping fp32's top-1 (what the gate counts, but coarse on a few
    hundred images), and the logits' SQNR in dB against fp32's (fine-grained)."""
    noise = float(((logits - reference) ** 2).sum())
    sqnr = 10 * np.log10(float((reference**2).sum()) / noise) if noise else float("inf")
    kept = float((logits.argmax(1) == reference.argmax(1)).mean())
    return {"kept": kept, "logit_sqnr_db": round(float(sqnr), 2)}


# --recipes: the low-bit recipe, and each technique taken out of it or added to it
RECIPES = {
    "default recipe": {},
    "- learned rounding": {"rounding": "nearest"},
    "- bias correction": {"bias_correction": False},
    "+ cross-layer equalization": {"equalize": True},
    "+ GPTQ at 8 bits too": {"rounding": "gptq"},
    "first, last at w8a8": {"layer_bits": "first=w8a8,last=w8a8"},
    "mixed precision, 5 bits": {"mixed_precision": True, "bit_budget": 5.0},
    "mixed precision, gate": {"mixed_precision": True},
}


def settings_for(scheme: str, methods, recipes: bool, model_name: str) -> list[tuple]:
    """``(techniques, method, quantize_model options)`` of every row for ``scheme``: each
    calibration method with each TECHNIQUES pair, or (``recipes``) each RECIPES row that
    applies to the scheme, with the default method."""
    from quantize import CALIBRATION_METHODS, DEFAULT_METHOD, parse_scheme

    if not recipes:
        return [
            (technique, method, {"equalize": equalize, "bias_correction": bias_correction})
            for technique, (equalize, bias_correction) in TECHNIQUES.items()
            for method in methods or CALIBRATION_METHODS
        ]
    parsed = parse_scheme(scheme)
    low = parsed.simulated and min(parsed.weight_bits, parsed.activation_bits) < 8
    target = get_profile(model_name).gate_ratio
    rows = []
    for name, options in RECIPES.items():
        if ("layer_bits" in options and not parsed.simulated) or (
            options.get("mixed_precision") and not low
        ):
            continue
        if options.get("bit_budget", 8) < parsed.weight_bits:
            continue
        extra = {"target_agreement": target} if options.get("mixed_precision") else {}
        rows.append((name, DEFAULT_METHOD, {**options, **extra}))
    return rows


def ours(model, calibration, held_out, expected, scheme: str, settings) -> list[dict]:
    """One row per ``(techniques, method, options)`` of ``settings``."""
    from quantize import quantize_model

    rows = []
    for technique, method, options in settings:
        start = time.perf_counter()
        quantized = quantize_model(
            model, [calibration], scheme, method=method, quiet=True, **options
        )
        seconds = time.perf_counter() - start
        score = agreement(all_logits(quantized, held_out), expected)
        bits = quantized.quantization_record.get("weight_bits_mean")
        rows.append(
            {"tool": "mlperf-port", "scheme": scheme, "techniques": technique,
             "method": method, **score, "weight_bits_mean": bits,
             "quantize_seconds": round(seconds, 1)}
        )  # fmt: skip
        log.info("%s %s %s: %s in %.0f s", scheme, technique, method, score, seconds)
    return rows


def onnx_runtime(model, calibration, held_out, expected, folder: Path) -> list[dict]:
    """ONNX Runtime's static quantization of the same fp32 model, each calibration method."""
    fp32_path = folder / "fp32.onnx"
    torch.onnx.export(
        model.eval(), (calibration[:1],), fp32_path, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}}, opset_version=17,
        dynamo=False,
    )  # fmt: skip
    images = [image.numpy() for image in calibration.split(1)]
    rows = []
    for method in ORT_METHODS:
        out = folder / f"int8-{method}.onnx"
        try:
            quantize_onnx(fp32_path, out, "input", images, method)
            score = agreement(all_logits(_ort_runner(cpu_session(out)), held_out), expected)
            rows.append(
                {"tool": "onnxruntime", "scheme": "int8 QDQ, per-channel weights",
                 "techniques": "quantize_static", "method": method, **score}
            )  # fmt: skip
            log.info("onnxruntime %s: %s", method, score)
        except Exception as err:  # one method failing must not hide the others
            rows.append({"tool": "onnxruntime", "method": method,
                         "error": f"{type(err).__name__}: {first_line(err, 200)}"})  # fmt: skip
    return rows


def _ort_runner(session):
    return lambda images: session.run(None, {"input": images.numpy()})[0]


def table(rows: list[dict], images: int, seeds: list[int]) -> str:
    """One line per setting: kept share and logit SQNR, averaged over the seeds."""
    settings: dict[tuple, list[dict]] = {}
    errors = []
    for row in rows:
        if "error" in row:
            errors.append(f"{row['tool']:<12} seed {row['seed']} {row['method']}: {row['error']}")
        else:
            key = (row["tool"], row["scheme"], row["techniques"], row["method"])
            settings.setdefault(key, []).append(row)
    lines = [
        f"{images} held-out photo crops per seed, seeds {', '.join(map(str, seeds))}: share "
        "keeping fp32's top-1 and logits' SQNR against fp32, mean over seeds (per seed)",
        "",
        f"{'tool':<12} {'scheme':<30} {'techniques':<28} {'method':<11} {'kept':>7} {'SQNR':>8}"
        f" {'w bits':>6} {'time':>6}",
    ]
    for (tool, scheme, techniques, method), group in settings.items():
        kept = [row["kept"] for row in group]
        sqnr = [row["logit_sqnr_db"] for row in group]
        per_seed = " ".join(f"{100 * k:.1f}/{q:.1f}" for k, q in zip(kept, sqnr, strict=True))
        bits = group[0].get("weight_bits_mean")
        seconds = [row["quantize_seconds"] for row in group if "quantize_seconds" in row]
        lines.append(
            f"{tool:<12} {scheme:<30} {techniques:<28} {method:<11} "
            f"{100 * np.mean(kept):5.1f} % {np.mean(sqnr):5.1f} dB "
            f"{'' if bits is None else f'{bits:.2f}':>6} "
            f"{f'{np.mean(seconds):.0f}s' if seconds else '':>6}  ({per_seed})"
        )
    return "\n".join(lines + errors)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quantization_study", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", choices=MODEL_NAMES, default="mobilenet_v1")
    p.add_argument("--checkpoint", help="a frozen graph (.pb/.tgz) to convert; default: stand-in")
    p.add_argument("--calibration", type=positive_int, default=48, help="calibration crops")
    p.add_argument("--images", type=positive_int, default=240, help="held-out crops scored")
    p.add_argument("--schemes", nargs="+", default=["int8"], help="e.g. int8 w8a8 w4a8")
    p.add_argument("--methods", nargs="+", help="our calibration methods (default: all)")
    p.add_argument(
        "--recipes",
        action="store_true",
        help="each technique of the low-bit recipe taken out or added (RECIPES), with the "
        "default calibration method, instead of every method with and without CLE and "
        "bias correction",
    )
    p.add_argument("--no-onnxruntime", action="store_true")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="stand-in and crop seeds")
    p.add_argument("--json", type=Path, help="write every row here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(renamed_options(argv, {"--seed": "--seeds"}))
    from quantize import CALIBRATION_METHODS

    for method in args.methods or ():
        if method not in CALIBRATION_METHODS:
            p.error(f"--methods: {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    return args


def study(args, seed: int) -> tuple[list[dict], str]:
    """Every row for one seed: a stand-in (or the checkpoint), its crops, each setting."""
    torch.manual_seed(seed)
    model, source = fp32_model(args.model, args.checkpoint, seed)
    model.eval()
    calibration = photo_crops(args.model, args.calibration, 1_000 + seed)
    held_out = photo_crops(args.model, args.images, 2_000 + seed)
    expected = all_logits(model, held_out)
    rows = []
    for scheme in args.schemes:
        settings = settings_for(scheme, args.methods, args.recipes, args.model)
        rows += ours(model, calibration, held_out, expected, scheme, settings)
    if not args.no_onnxruntime:
        with tempfile.TemporaryDirectory() as folder:
            rows += onnx_runtime(model, calibration, held_out, expected, Path(folder))
    return [{"seed": seed, **row} for row in rows], source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.quiet)
    rows = []
    for seed in args.seeds:
        seed_rows, source = study(args, seed)
        rows += seed_rows
    print(f"model: {args.model} ({source}); CPU: {cpu_description()['cpu']}")
    print(table(rows, args.images, args.seeds))
    if args.json is not None:
        report = {"model": args.model, "source": source, "calibration": args.calibration,
                  "images": args.images, "seeds": args.seeds, "rows": rows}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
