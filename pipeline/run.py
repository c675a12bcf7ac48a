"""One command from "ImageNet val + an MLPerf checkpoint" to "top-1 next to MLPerf's".

    python -m pipeline.run --model resnet50 [--checkpoint PATH|URL] [--data-dir DIR] ...

Stages: fetch → preprocess → convert (verified against TensorFlow) → evaluate. A rerun redoes
only what changed: preprocess re-crops only changed, added or vanished files; convert and
evaluate are skipped while their stamps (pipeline.stamps) record the same inputs.

One run at a time per work dir (W/<model>/.lock; --wait waits for it). Under ``torchrun
--nproc-per-node N -m pipeline.run ...`` rank 0 runs the stages and every rank evaluates a
shard of the cache (``pipeline.ranks``).

This module is the command line. The run's options are ``pipeline.options``, the stages
``pipeline.stages``, the evaluations a request makes ``pipeline.plan`` and what a run
reports ``pipeline.summary``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import configure_logging, positive_int, run_cli
from core.errors import UserError
from core.profiles import MODEL_NAMES
from eval.distributed import init_from_environment, shutdown
from eval.options import add_evaluation_options
from pipeline.fetch import SHA256_HELP
from pipeline.options import STAGES, RunOptions
from pipeline.plan import BACKEND_RUNS
from pipeline.ranks import follow, hand_over
from pipeline.stages import run_pipeline


def _parse_stages(text: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(STAGES)}"
        )
    return stages


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.split("\n")[0])
    p.add_argument("--model", dest="model_name", required=True, choices=MODEL_NAMES)
    p.add_argument(
        "--checkpoint",
        dest="checkpoint_source",
        help="frozen graph .pb / MLPerf .tgz: a path or a URL (default: MLPerf's)",
    )
    p.add_argument("--sha256", help=SHA256_HELP)
    p.add_argument("--data-dir", type=Path, help="ImageNet val (default: built-in sample)")
    p.add_argument("--val-map", type=Path, help="val_map.txt outside the data dir")
    p.add_argument("--work-dir", type=Path, default=Path("work"))
    p.add_argument("--limit", type=positive_int, help="use only the first N images of the listing")
    p.add_argument(
        "--workers", type=positive_int, help="preprocessing threads (default: all cores)"
    )
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images")
    p.add_argument("--backend", default="torch", choices=tuple(BACKEND_RUNS))
    add_evaluation_options(p)
    p.add_argument(
        "--calibration-list",
        type=Path,
        metavar="FILE",
        help="images --transform/--quantize calibrate on, in MLPerf's format (one name per "
        "line, relative to the data dir), or 'mlperf' for MLPerf's cal_image_list_option_1.txt; "
        "default: MLPerf's list when the data dir holds its images, else the first 500 listed "
        "images",
    )
    p.add_argument(
        "--stages",
        type=_parse_stages,
        default=STAGES,
        help=f"comma-separated, from {', '.join(STAGES)}: runs up to the last named stage, "
        "with the earlier ones it needs (their records make them free when up to date)",
    )
    p.add_argument("--force", action="store_true", help="redo every stage (re-crop included)")
    p.add_argument(
        "--wait", action="store_true", help="wait for another run on this work dir to finish"
    )
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    opts = RunOptions.from_options(args)
    opts.evaluation.check()  # a bad engine, device or precision: before any stage
    ctx = init_from_environment(opts.evaluation.device, "pipeline.run")
    try:
        if ctx.distributed and opts.evaluation.loadgen:
            raise UserError("a LoadGen run is one process: run it without torchrun")
        if ctx.is_main:
            run_pipeline(opts, ctx)
            hand_over(ctx, None)  # the other ranks may stop
        else:
            follow(ctx)
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
