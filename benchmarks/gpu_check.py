"""The prepared GPU check: both models on CUDA against the CPU, speed of the whole CLI.

    python -m benchmarks.gpu_check --out DIR [--device cuda] [--images 50000] [--subset 1024]
                                   [--weights-dir gpu-weights] [--work-dir /tmp/gpu-check]

For a GPU machine without TensorFlow; run from the repository root. Per model: a cache of
``--images`` hard links to ``--unique`` generated JPEGs (timed); weights (``--weights-dir``
from ``make gpu-weights``, else seeded with batch norm measured on cached crops); ``python -m
eval`` on the CPU over the first ``--subset`` images, then on ``--device`` (fp32), which must
agree exactly; then the whole CLI over every image. Then the longer runs: tf32 and bf16
(CUDA), torchrun, the other ``--engines`` and cuDNN autotuning.

Each step lands in DIR/gpu_check.json as soon as it ends (a timeout keeps what finished) and
in DIR/gpu_check.log. Exit status 1 when a comparison disagrees, a step failed or --device
names CUDA that PyTorch cannot see. ``--device cpu --images 256 --engines eager`` rehearses it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from core.cli import positive_int, run_cli
from core.errors import UserError
from core.files import write_text_atomic
from core.profiles import MODEL_NAMES

log = logging.getLogger("gpu_check")

ROOT = Path(__file__).resolve().parent.parent


class Report:
    """gpu_check.json, rewritten after every step."""

    def __init__(self, out_dir: Path, header: dict):
        self.path = out_dir / "gpu_check.json"
        self.data = {**header, "steps": {}, "failures": []}
        self.save()

    def record(self, step: str, value) -> None:
        self.data["steps"][step] = value
        self.save()

    def fail(self, what: str) -> None:
        log.error("FAILED: %s", what)
        self.data["failures"].append(what)
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=2) + "\n")


def run_timed(args: list[str], env: dict | None = None) -> float:
    """Run a command from the repository root; its wall seconds; raise on failure."""
    start = time.perf_counter()
    proc = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[:6])} ... exited {proc.returncode}: {proc.stderr[-800:]}"
        )
    return wall


def make_data(work: Path, images: int, unique: int) -> dict:
    """``unique`` generated JPEGs hard-linked into an ``images``-long val_map listing."""
    from fixtures.images import write_val_set

    start = time.perf_counter()
    source = work / "unique"
    if not (source / "val_map.txt").exists():
        write_val_set(source, unique, layout="val_map", seed=5)
    entries = [line.split() for line in (source / "val_map.txt").read_text().splitlines()]
    data = work / f"data-{images}"
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(images):
        name, label = entries[i % len(entries)]
        target = data / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        if not target.exists():
            os.link(source / name, target)
        lines.append(f"{target.name} {label}\n")
    write_text_atomic(data / "val_map.txt", "".join(lines))
    return {"data_dir": str(data), "images": images, "unique_jpegs": unique,
            "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def preprocess(model_name: str, data: Path, work: Path, workers: int) -> dict:
    cache = work / f"cache-{model_name}"
    wall = run_timed(
        [sys.executable, "-m", "preprocess", "--model", model_name, "--data-dir", str(data),
         "--cache-dir", str(cache), "--workers", str(workers), "--quiet"]
    )  # fmt: skip
    return {"cache": str(cache), "workers": workers, "wall_seconds": round(wall, 2)}


def make_weights(model_name: str, cache: Path, work: Path, weights_dir: Path) -> dict:
    """The converted .pth in ``weights_dir`` when there is one, else seeded weights
    calibrated on real crops."""
    import torch

    from benchmarks.seeded_weights import calibrate_batch_norm, save_converted, seeded_model
    from convert.api import load_checkpoint
    from preprocess import load_cache, normalize

    converted = weights_dir / f"{model_name}.pth"
    if converted.is_file():
        load_checkpoint(converted, expected_model=model_name)
        return {"weights": str(converted), "source": "converted from the fixture graph"}
    crops = load_cache(cache, model_name).read(0, 32)
    nchw = torch.from_numpy(normalize(crops, model_name)).permute(0, 3, 1, 2).contiguous()
    module = calibrate_batch_norm(seeded_model(model_name, seed=3), nchw)
    path = save_converted(module, model_name, work / "weights" / f"{model_name}.pth")
    return {"weights": str(path), "source": f"seeded, batch norm measured on {len(nchw)} crops"}


def check(
    report: Report, ctx: dict, step: str, name: str, *extra, compare=True, launcher=(), env=None
) -> None:
    """``python -m eval`` into runs/NAME (under ``launcher``, with ``env`` added), timed and
    recorded as <model>.STEP; compared with the CPU run unless ``compare`` is False."""
    out = ctx["runs"] / name
    wall = run_timed(
        [sys.executable, *launcher, "-m", "eval", "--model", ctx["model_name"],
         "--cache-dir", str(ctx["cache"]), "--weights", str(ctx["weights"]), "--out", str(out),
         "--quiet", *extra], env=env,
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    keep = ("engine", "engine_notes", "precision", "device_name", "images", "top1", "top5",
            "setup_seconds", "images_per_second", "inference_seconds", "wall_seconds",
            "batch_size", "world_size", "fp32_reference")  # fmt: skip
    res = {"cli_wall_seconds": round(wall, 2), **{k: results.get(k) for k in keep}}
    if compare:
        res["agree_with_cpu"] = agreement(out, ctx["runs"] / "cpu-eager", ctx["subset"])
        check_agree(report, f"{ctx['model_name']} {name} vs cpu", res["agree_with_cpu"])
    report.record(f"{ctx['model_name']}.{step}", res)


def agreement(out: Path, reference: Path, count: int) -> dict:
    """Predictions and top-5 of ``out`` against ``reference`` over the first ``count``."""
    ours, theirs = np.load(out / "top5.npy")[:count], np.load(reference / "top5.npy")[:count]
    return {
        "compared": int(len(theirs)),
        "top1_equal": int((ours[:, 0] == theirs[:, 0]).sum()),
        "top5_equal": int((ours == theirs).all(axis=1).sum()),
    }


def check_agree(report: Report, name: str, agree: dict) -> None:
    if agree["top1_equal"] != agree["compared"] or agree["top5_equal"] != agree["compared"]:
        report.fail(f"{name}: {agree}")


def on_subset(ctx: dict, device: str, engine: str) -> tuple[str, ...]:
    return ("--device", device, "--engine", engine, "--limit", str(ctx["subset"]))


def prepare_model(report: Report, model_name: str, args, data: Path) -> dict:
    """Cache, weights and the CPU reference over the subset: what every check compares with."""
    prep = preprocess(model_name, data, args.work_dir, args.workers)
    report.record(f"{model_name}.preprocess", prep)
    cache = Path(prep["cache"])
    weights = make_weights(model_name, cache, args.work_dir, args.weights_dir)
    report.record(f"{model_name}.weights", weights)
    ctx = {"model_name": model_name, "cache": cache, "weights": weights["weights"],
           "runs": args.work_dir / "runs" / model_name, "subset": args.subset}  # fmt: skip
    check(report, ctx, "cpu", "cpu-eager", *on_subset(ctx, "cpu", "eager"), compare=False)
    return ctx


def main_checks(report: Report, ctx: dict, args) -> None:
    """CUDA eager on the subset, then the whole CLI with its defaults over every image."""
    check(report, ctx, "subset.eager", "subset-eager", *on_subset(ctx, args.device, "eager"))
    check(report, ctx, "full", "full", "--device", args.device)


def extra_checks(report: Report, ctx: dict, args) -> None:
    """Precisions, torchrun, the fast engines and cuDNN autotuning (the longer runs last)."""
    device = args.device
    on_cuda = device.startswith("cuda")
    for precision in ("tf32", "bf16") if on_cuda else ():
        # full-<precision> is a sibling of full/: eval finds its fp32 reference there.
        check(report, ctx, f"full.{precision}", f"full-{precision}", "--device", device,
              "--precision", precision, compare=False)  # fmt: skip
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                str(args.nproc)]  # fmt: skip
    check(report, ctx, "torchrun", f"torchrun-{args.nproc}", *on_subset(ctx, device, "eager"),
          launcher=launcher)  # fmt: skip
    for engine in [e for e in args.engines if e != "eager"]:
        check(report, ctx, f"subset.{engine}", f"subset-{engine}",
              *on_subset(ctx, device, engine))  # fmt: skip
    if on_cuda:  # the cost and gain of cuDNN autotuning, measured
        check(report, ctx, "full.autotune", "full-autotune", "--device", device,
              env={"MLPERF_PORT_CUDNN_AUTOTUNE": "1"})  # fmt: skip


def each_model(report: Report, models: list, step) -> None:
    """``step(model_name)`` for every model; a failure is recorded and the others go on."""
    for model_name in models:
        try:
            step(model_name)
        except Exception as err:
            log.error("%s", traceback.format_exc())
            report.fail(f"{model_name}: {type(err).__name__}: {str(err)[-600:]}")


def environment(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["card"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="gpu_check.json/.log go here")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu rehearses")
    parser.add_argument("--images", type=positive_int, default=50_000)
    parser.add_argument("--unique", type=positive_int, default=256, help="distinct JPEGs")
    parser.add_argument("--subset", type=positive_int, default=1024, help="compared with the CPU")
    parser.add_argument(
        "--workers", type=positive_int, default=os.cpu_count() or 1, help="preprocessing threads"
    )
    parser.add_argument("--engines", default="eager,fast", help="engines checked on --device")
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--nproc", type=positive_int, default=1, help="torchrun processes")
    parser.add_argument(
        "--weights-dir", type=Path, default=ROOT / "gpu-weights",
        help="where `make gpu-weights` put mobilenet_v1.pth",
    )  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gpu-check"))
    args = parser.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    args.models = [m for m in args.models.split(",") if m]
    args.subset = min(args.subset, args.images)
    return args


def require_device(device: str) -> None:
    """A check that cannot run must not read as a pass: no CUDA is an error, not a no-op."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"this PyTorch ({torch.__version__}) sees no CUDA GPU, so nothing was checked: run "
            "on a machine with one, or pass --device cpu to rehearse the check"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(args.out / "gpu_check.log"), logging.StreamHandler()],
    )
    started = time.perf_counter()
    report = Report(args.out, {"environment": environment(args.device)})
    data = make_data(args.work_dir, args.images, args.unique)
    report.record("data", data)
    # Both models' essentials first, so a short time on the GPU still answers the main
    # question; then the extra measurements.
    ready: dict[str, dict] = {}

    def essentials(model_name: str) -> None:
        ready[model_name] = prepare_model(report, model_name, args, Path(data["data_dir"]))
        main_checks(report, ready[model_name], args)

    each_model(report, args.models, essentials)
    each_model(
        report, list(ready), lambda model_name: extra_checks(report, ready[model_name], args)
    )
    report.data["seconds"] = round(time.perf_counter() - started, 1)
    report.save()
    failed = bool(report.data["failures"])
    print(f"gpu_check: {'FAILED' if failed else 'passed'} in {report.data['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
