"""``python -m eval``: evaluate a model over a preprocessed cache, or compare predictions.

    python -m eval --model M --cache CACHE (--weights W.pth | --backend tf --checkpoint PB)
                   [--batch-size B] [--device cpu|cuda] [--limit N] [--out DIR] [--wait]
                   [--engine auto|eager|fast] [--precision fp32|tf32|bf16] [--quiet]
    torchrun --nproc-per-node N -m eval ...   (one shard of the cache per process)
    python -m eval compare A.npy B.npy [--files CACHE_OR_NAMES] [--model M] [--strict]

Evaluation writes DIR/results.json, DIR/predictions.npy and DIR/top5.npy (DIR defaults to
results/<model>-<backend>) and prints a summary table. One run writes into DIR at a time: a
second one exits with a sentence naming the first, or waits for it with --wait.

Under torchrun (or ``python -m torch.distributed.run``) each process evaluates a contiguous
shard (gloo on the CPU, NCCL on CUDA with one GPU per process: ``--device cuda`` becomes
``cuda:LOCAL_RANK``); rank 0 gathers the predictions and alone writes DIR, with
``"world_size": N`` in results.json. The predictions equal a one-process run's.
"""

from __future__ import annotations

import argparse
import logging
import sys

from core.errors import UserError, configure_logging, run_cli
from core.profiles import MODEL_NAMES

log = logging.getLogger("eval")

# Default batch sizes: 32 measured best on the CPU; a GPU needs large batches to be busy.
CPU_BATCH, CUDA_BATCH = 32, 256


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="Top-1/top-5 of a converted model (or the TF reference) over a "
        "preprocessed cache. 'python -m eval compare -h' compares two predictions files.",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--cache", required=True, help="preprocessed cache directory")
    parser.add_argument("--backend", choices=("torch", "tf"), default="torch")
    parser.add_argument("--weights", help="converted PyTorch weights (.pth), torch backend")
    parser.add_argument("--checkpoint", help="the original frozen graph (.pb), tf backend")
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"images per batch (default: {CPU_BATCH} on the CPU, {CUDA_BATCH} on CUDA)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--limit", type=int, help="evaluate only the first N cached images")
    parser.add_argument("--out", help="output directory (default: results/<model>-<backend>)")
    parser.add_argument(
        "--engine",
        default="auto",
        help="torch execution: eager, fast (frozen/compiled) or auto (default: whichever "
        "should finish first on this device for this many images; why goes to engine_notes)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "tf32", "bf16"),
        help="fp32 (default, TF32 off: the figure comparable with MLPerf's); tf32 or bf16 on "
        "CUDA only. A non-fp32 run records in results.json the share of its predictions equal "
        "to an fp32 run of the same model, cache and weights found in a sibling folder of "
        "--out (e.g. results/resnet50-torch beside results/resnet50-bf16)",
    )
    parser.add_argument(
        "--loadgen", action="store_true", help="also run MLPerf LoadGen (logs in OUT/loadgen)"
    )
    parser.add_argument("--loadgen-mode", choices=("accuracy", "performance"), default="accuracy")
    parser.add_argument("--scenario", choices=("Offline", "SingleStream"), default="Offline")
    parser.add_argument(
        "--wait", action="store_true", help="wait for another run using --out to finish"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info logs")
    return parser


def default_batch_size(args: argparse.Namespace) -> int:
    if args.batch_size is not None:
        return args.batch_size
    return CUDA_BATCH if args.device.startswith("cuda") else CPU_BATCH


def check_backend_inputs(args: argparse.Namespace) -> None:
    """Catch a weights/checkpoint mix-up before any work starts."""
    if args.backend == "torch" and args.checkpoint and not args.weights:
        raise UserError("--checkpoint is for --backend tf; the torch backend needs --weights")
    if args.backend == "tf" and args.weights:
        raise UserError("--weights is for the torch backend; --backend tf takes --checkpoint")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        from eval.compare import main as compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    check_backend_inputs(args)

    from eval.evaluate import evaluate
    from eval.report import format_table

    out_dir = args.out or f"results/{args.model}-{args.backend}"
    results = evaluate(
        args.model,
        args.cache,
        weights=args.weights,
        backend=args.backend,
        checkpoint=args.checkpoint,
        batch_size=default_batch_size(args),
        device=args.device,
        limit=args.limit,
        out_dir=out_dir,
        quiet=args.quiet,
        engine=args.engine,
        loadgen=args.loadgen_mode if args.loadgen else None,
        scenario=args.scenario,
        wait=args.wait,
        precision=args.precision,
    )
    if results is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    log.info("wrote %s/results.json, predictions.npy, top5.npy", out_dir)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
