"""``python -m eval``: evaluate a model over a preprocessed cache, or compare predictions.

    python -m eval --model M --cache-dir CACHE (--weights W.pth | --backend tf --checkpoint PB)
    python -m eval --model M --cache-dir C --weights W.pth (--transform F.py:fn | --quantize int8)
    torchrun --nproc-per-node N -m eval ...   (one shard of the cache per process)
    python -m eval compare FP32 METHOD [--labels VAL_MAP_OR_CACHE --model M] [--json] ...
    python -m eval layers --model M --weights W.pth (--transform SPEC | --quantize int8) ...
    python -m eval layers --sensitivity --model M --weights W.pth --quantize wXaY ...

Writes DIR/results.json, predictions.npy and top5.npy and prints a summary table; one run
writes into DIR at a time (a second one refuses, or waits with --wait).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.cli import configure_logging, positive_int, renamed_options, run_cli
from core.errors import UserError
from core.files import check_output_dir, exclusive_lock
from core.profiles import MODEL_NAMES, get_profile
from eval.method.options import add_method_options
from eval.options import BACKENDS, EvalSettings, add_evaluation_options

log = logging.getLogger("eval")

# Old spellings, still accepted (hidden from --help) so earlier scripts keep working.
RENAMED_OPTIONS = {"--cache": "--cache-dir"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="Top-1/top-5 of a converted model (or the TF reference) over a "
        "preprocessed cache. 'python -m eval compare -h' compares two predictions files; "
        "'python -m eval layers -h' compares a modified model with fp32 block by block.",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--cache-dir", required=True, help="preprocessed cache directory")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--weights", help="converted PyTorch weights (.pth), torch backend")
    parser.add_argument("--checkpoint", help="the original frozen graph (.pb), tf backend")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    parser.add_argument(
        "--out",
        help="output directory (default: results/<model>-<backend>, and -<precision> unless "
        "fp32, e.g. results/resnet50-torch-bf16)",
    )
    add_evaluation_options(parser)
    parser.add_argument(
        "--calibration-cache",
        metavar="DIR",
        help="preprocessed calibration images for --transform/--quantize (python -m "
        "preprocess --calibration-list FILE ...; default: the first 500 images of --cache-dir, "
        "recorded as not MLPerf's list)",
    )
    parser.add_argument(
        "--reference",
        metavar="DIR",
        help="the fp32 run (an eval --out folder) a modified model is judged against "
        "(default: the sibling folder of --out with an fp32 run of the same model, cache and "
        "weights); one made from other weights, another cache or fewer images is refused",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for another run using --out to finish"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info logs")
    return parser


def check_backend_inputs(args: argparse.Namespace) -> None:
    """Catch a weights/checkpoint mix-up before any work starts."""
    if args.backend == "torch" and args.checkpoint and not args.weights:
        raise UserError("--checkpoint is for --backend tf; the torch backend needs --weights")
    if args.backend == "tf" and args.weights:
        raise UserError("--weights is for the torch backend; --backend tf takes --checkpoint")


def default_out_dir(model_name: str, settings: EvalSettings) -> str:
    """Where a run without --out writes: modified runs (another precision, a transform)
    beside, not over, the fp32 one that is their reference."""
    return f"results/{model_name}-{settings.folder_name}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        from eval.compare import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["layers"]:
        return layers_main(argv[1:])
    args = build_parser().parse_args(renamed_options(argv, RENAMED_OPTIONS))
    configure_logging(args.quiet)
    check_backend_inputs(args)
    settings = EvalSettings.from_options(args)
    settings.check()

    from eval.evaluate import evaluate
    from eval.method.summary import method_rows

    out_dir = args.out or default_out_dir(args.model, settings)
    result = evaluate(args.model, args.cache_dir, settings, out_dir=out_dir)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    log.info("wrote %s/results.json, predictions.npy, top5.npy", out_dir)
    print(result.table(method_rows(result.to_json())))
    return 0


# ---------------------------------------------------------------- python -m eval layers


def build_layers_parser() -> argparse.ArgumentParser:
    from eval.method.layers import DEFAULT_IMAGES, DEFAULT_THRESHOLD_DB, LAYERS_FILE

    parser = argparse.ArgumentParser(
        prog="python -m eval layers",
        description="Compare a modified model (--transform or --quantize) with the fp32 model "
        "block by block on cached images: SQNR, cosine similarity, max |difference|. With "
        "--sensitivity: each layer's own cost under --quantize wXaY, on calibration images.",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--weights", required=True, help="the converted fp32 .pth")
    parser.add_argument("--cache-dir", required=True, help="preprocessed images to compare on")
    parser.add_argument("--calibration-cache", metavar="DIR", help="as for python -m eval")
    parser.add_argument(
        "--images", type=positive_int, help=f"cached images compared (default {DEFAULT_IMAGES})"
    )
    parser.add_argument(
        "--threshold-db",
        type=float,
        help=f"the SQNR a block should keep (default {DEFAULT_THRESHOLD_DB:g})",
    )
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="instead: each layer quantized alone at its --quantize wXaY width (its weights "
        "and the activation it reads, the rest fp32), its logits SQNR and top-1 changes "
        "measured on the calibration images only, never on evaluation images (MLPerf's rule: "
        "give --calibration-cache; without it the first images of --cache-dir stand in, "
        "flagged as not MLPerf's list); writes sensitivity.json (and sensitivity.png with "
        "matplotlib)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help=f"folder for {LAYERS_FILE} (sensitivity.json with --sensitivity)",
    )
    parser.add_argument("--quiet", action="store_true")
    add_method_options(parser)
    return parser


def layers_settings(args: argparse.Namespace) -> EvalSettings:
    """The method options of ``python -m eval layers``, checked: one sentence before any
    work."""
    from eval.method.sensitivity import check_sensitivity_settings

    # The evaluation options this command has no flags for, at their defaults.
    defaults = {"loadgen": False, "loadgen_mode": "accuracy", "batch_size": None}
    settings = EvalSettings.from_options(argparse.Namespace(**{**defaults, **vars(args)}))
    if args.sensitivity:
        check_sensitivity_settings(settings)
        given = [
            option
            for option, value in (("--images", args.images), ("--threshold-db", args.threshold_db))
            if value is not None
        ]
        if given:
            raise UserError(
                f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for the block "
                "comparison: --sensitivity measures on every calibration image"
            )
    settings.check()
    if not settings.transformed:
        raise UserError(
            "python -m eval layers compares a modified model: give --transform or --quantize"
        )
    return settings


def layers_main(argv: list[str] | None = None) -> int:
    from eval.method.calibration import calibration_set
    from preprocess import load_cache

    args = build_layers_parser().parse_args(argv)
    configure_logging(args.quiet)
    settings = layers_settings(args)
    profile = get_profile(args.model)
    if not Path(args.weights).is_file():
        raise UserError(f"weights file not found: {args.weights}")
    cache = load_cache(Path(args.cache_dir), profile)
    calibration, calibration_record = calibration_set(profile, cache, settings.calibration_cache)
    out_dir = Path(args.out)
    check_output_dir(out_dir)
    with exclusive_lock(out_dir, "output dir"):
        if args.sensitivity:
            from eval.method.sensitivity import sensitivity_report_for, write_sensitivity

            report = sensitivity_report_for(
                profile, args.weights, settings, calibration, calibration_record, args.quiet
            )
            write_sensitivity(out_dir, report)
        else:
            report = _layer_report(args, profile, settings, cache, calibration, out_dir)
    print(report.table())
    return 0


def _layer_report(args, profile, settings, cache, calibration, out_dir: Path):
    """The block-by-block comparison with fp32, written as layers.json (and layers.png)."""
    from eval.method.layers import (
        DEFAULT_IMAGES,
        DEFAULT_THRESHOLD_DB,
        layer_report_for,
        write_report,
    )

    images = DEFAULT_IMAGES if args.images is None else args.images
    threshold = DEFAULT_THRESHOLD_DB if args.threshold_db is None else args.threshold_db
    report = layer_report_for(
        profile, args.weights, settings, cache, calibration, images, threshold, args.quiet
    )
    write_report(out_dir, report)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
