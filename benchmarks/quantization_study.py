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
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.onnx_int8 import ORT_METHODS, cpu_session, quantize_onnx
from core.cli import configure_logging, positive_int, run_cli
from core.errors import first_line
from core.files import write_text_atomic
from core.profiles import MODEL_NAMES

log = logging.getLogger("quantization_study")

TECHNIQUES = {  # name -> (equalize, bias_correction)
    "per-channel only": (False, False),
    "+ bias correction": (False, True),
    "+ cross-layer equalization": (True, False),
    "+ CLE + bias correction": (True, True),
}


def fp32_model(model_name: str, checkpoint: str | None, seed: int):
    """The converted ``checkpoint``, or the tests' realistic stand-in model."""
    if checkpoint is None:
        from fixtures import photo_models as models

        builder = models.mobilenet if model_name == "mobilenet_v1" else models.resnet
        return builder(seed), "stand-in: random weights, batch norm measured on photos"
    from convert import convert_checkpoint, load_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        pth = Path(folder) / "model.pth"
        convert_checkpoint(model_name, checkpoint, pth, verify=False, quiet=True)
        return load_checkpoint(pth, expected_model=model_name)[0], f"converted {checkpoint}"


def photo_crops(model_name: str, count: int, seed: int) -> torch.Tensor:
    """MLPerf-normalised NCHW crops and rescalings of real photographs."""
    from fixtures import photo_models as models

    return models.crops(count, seed, "mobilenet" if model_name == "mobilenet_v1" else "resnet")


def top1(run, images: torch.Tensor, batch: int = 16) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [np.asarray(run(images[i : i + batch])).argmax(1) for i in range(0, len(images), batch)]
        )


def ours(model, calibration, held_out, expected, scheme: str) -> list[dict]:
    """Every calibration method with each set of techniques."""
    from quantize import CALIBRATION_METHODS, quantize_model

    rows = []
    for technique, (equalize, bias_correction) in TECHNIQUES.items():
        for method in CALIBRATION_METHODS:
            start = time.perf_counter()
            quantized = quantize_model(
                model,
                [calibration],
                scheme,
                method=method,
                equalize=equalize,
                bias_correction=bias_correction,
                quiet=True,
            )
            seconds = time.perf_counter() - start
            kept = float((top1(quantized, held_out) == expected).mean())
            rows.append(
                {"tool": "mlperf-port", "scheme": scheme, "techniques": technique,
                 "method": method, "kept": kept, "quantize_seconds": round(seconds, 1)}
            )  # fmt: skip
            log.info("%s %s %s: %.1f %%", scheme, technique, method, 100 * kept)
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
            kept = float((top1(_ort_runner(cpu_session(out)), held_out) == expected).mean())
            rows.append(
                {"tool": "onnxruntime", "scheme": "int8 QDQ, per-channel weights",
                 "techniques": "quantize_static", "method": method, "kept": kept}
            )  # fmt: skip
            log.info("onnxruntime %s: %.1f %%", method, 100 * kept)
        except Exception as err:  # one method failing must not hide the others
            rows.append({"tool": "onnxruntime", "method": method,
                         "error": f"{type(err).__name__}: {first_line(err, 200)}"})  # fmt: skip
    return rows


def _ort_runner(session):
    return lambda images: session.run(None, {"input": images.numpy()})[0]


def table(rows: list[dict], images: int) -> str:
    lines = [f"share of {images} held-out photo crops keeping fp32's top-1", ""]
    lines.append(f"{'tool':<12} {'scheme':<30} {'techniques':<28} {'method':<11} kept")
    for row in rows:
        if "error" in row:
            lines.append(f"{row['tool']:<12} {row.get('method', ''):<11} {row['error']}")
            continue
        lines.append(
            f"{row['tool']:<12} {row['scheme']:<30} {row['techniques']:<28} {row['method']:<11} "
            f"{100 * row['kept']:5.1f} %"
        )
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quantization_study", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", choices=MODEL_NAMES, default="mobilenet_v1")
    p.add_argument("--checkpoint", help="a frozen graph (.pb/.tgz) to convert; default: stand-in")
    p.add_argument("--calibration", type=positive_int, default=48, help="calibration crops")
    p.add_argument("--images", type=positive_int, default=240, help="held-out crops scored")
    p.add_argument("--schemes", nargs="+", default=["int8"], help="e.g. int8 w8a8 w4a8")
    p.add_argument("--no-onnxruntime", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every row here")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.quiet)
    torch.manual_seed(args.seed)
    model, source = fp32_model(args.model, args.checkpoint, args.seed)
    model.eval()
    calibration = photo_crops(args.model, args.calibration, 1_000 + args.seed)
    held_out = photo_crops(args.model, args.images, 2_000 + args.seed)
    expected = top1(model, held_out)
    rows = []
    for scheme in args.schemes:
        rows += ours(model, calibration, held_out, expected, scheme)
    if not args.no_onnxruntime:
        with tempfile.TemporaryDirectory() as folder:
            rows += onnx_runtime(model, calibration, held_out, expected, Path(folder))
    print(f"model: {args.model} ({source}); CPU: {platform.processor() or platform.machine()}")
    print(table(rows, args.images))
    if args.json is not None:
        report = {"model": args.model, "source": source, "calibration": args.calibration,
                  "images": args.images, "seed": args.seed, "rows": rows}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
