"""The prepared GPU check: CUDA evaluation of both converted models against the CPU result.

    python -m benchmarks.gpu_check [--work-dir work/gpu-check] [--images 512] [--json PATH]

For each model it builds the fixture checkpoint (full size, MLPerf's node names, random
weights) and a generated validation set, runs the pipeline on the CPU (the reference
predictions), then evaluates the same converted weights on CUDA with TF32 off, eager and
fast, and reports: agreement of predictions and top-5 with the CPU run, images/s on the
GPU and on the CPU, and the card's name. Exit status 1 when any CUDA run disagrees with
the CPU on any image. Meant for a machine with a GPU; on one without, it says so and exits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from core.errors import configure_logging
from core.files import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent

MODELS = ("resnet50", "mobilenet_v1")
CUDA_ENGINES = ("eager", "fast")


def prepare_inputs(work_dir: Path, images: int) -> tuple[dict[str, Path], Path]:
    from tests.fixtures.images import write_val_set
    from tests.fixtures.tf_graphs import write_mobilenet_v1_tgz, write_resnet50_pb

    ckpt_dir = work_dir / "checkpoints"
    checkpoints = {
        "resnet50": ckpt_dir / "resnet50_v1.pb",
        "mobilenet_v1": ckpt_dir / "mobilenet_v1_1.0_224.tgz",
    }
    if not checkpoints["resnet50"].exists():
        write_resnet50_pb(checkpoints["resnet50"], seed=3)
    if not checkpoints["mobilenet_v1"].exists():
        write_mobilenet_v1_tgz(checkpoints["mobilenet_v1"], seed=3)
    data_dir = work_dir / f"data-{images}"
    if not (data_dir / "val_map.txt").exists():
        write_val_set(data_dir, images, layout="val_map", seed=5)
    return checkpoints, data_dir


def check_model(
    model: str, checkpoint: Path, data_dir: Path, work_dir: Path, device: str
) -> list[dict]:
    from eval import evaluate
    from pipeline.run import RunOptions, run_pipeline

    state = run_pipeline(
        RunOptions(
            model=model,
            work_dir=work_dir / "run",
            checkpoint=str(checkpoint),
            data_dir=data_dir,
            engine="eager",
            quiet=True,
        )
    )
    cpu_dir = state.model_dir / "eval-torch"
    cpu = json.loads((cpu_dir / "results.json").read_text())
    cpu_pred, cpu_top5 = np.load(cpu_dir / "predictions.npy"), np.load(cpu_dir / "top5.npy")
    rows = [{"model": model, "device": "cpu", "engine": cpu["engine"], **_speed(cpu)}]
    for engine in CUDA_ENGINES:
        out_dir = work_dir / "cuda" / model / engine
        res = evaluate(
            model,
            state.cache_dir,
            weights=state.weights,
            device=device,
            engine=engine,
            out_dir=out_dir,
            quiet=True,
        )
        pred, top5 = np.load(out_dir / "predictions.npy"), np.load(out_dir / "top5.npy")
        rows.append(
            {
                "model": model,
                "device": res.get("device_name", device),
                "engine": res["engine"],
                **_speed(res),
                "top1_agree_with_cpu": int((pred == cpu_pred).sum()),
                "top5_agree_with_cpu": int((top5 == cpu_top5).all(axis=1).sum()),
                "images": int(len(pred)),
            }
        )
    return rows


def _speed(results: dict) -> dict:
    return {
        "images_per_second": results["images_per_second"],
        "setup_seconds": results.get("setup_seconds"),
        "top1": results["top1"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work" / "gpu-check")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--device", default="cuda", help="cuda (default); cpu only rehearses the script"
    )
    args = parser.parse_args(argv)
    configure_logging(quiet=True)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: this PyTorch ({torch.__version__}) sees no CUDA GPU; nothing to do")
        return 0
    started = time.perf_counter()
    checkpoints, data_dir = prepare_inputs(args.work_dir, args.images)
    rows = []
    for model in MODELS:
        rows += check_model(model, checkpoints[model], data_dir, args.work_dir, args.device)

    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"gpu_check on {card}, torch {torch.__version__}, TF32 off")
    print(f"{'model':13s} {'device':28s} {'engine':24s} {'img/s':>8s} {'setup s':>8s} agree")
    failed = False
    for r in rows:
        agree = "-"
        if "top1_agree_with_cpu" in r:
            agree = f"top-1 {r['top1_agree_with_cpu']}/{r['images']}, top-5 "
            agree += f"{r['top5_agree_with_cpu']}/{r['images']}"
            failed |= r["top1_agree_with_cpu"] != r["images"]
        setup = "-" if r["setup_seconds"] is None else f"{r['setup_seconds']:.1f}"
        print(
            f"{r['model']:13s} {str(r['device'])[:28]:28s} {str(r['engine'])[:24]:24s} "
            f"{r['images_per_second']:8.1f} {setup:>8s} {agree}"
        )
    print(f"gpu_check: {'FAILED' if failed else 'passed'} in {time.perf_counter() - started:.0f} s")
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
