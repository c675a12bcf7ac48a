"""``python -m convert``: MLPerf frozen graph -> one verified, self-describing .pth (+ a
human-readable JSON record beside it)."""

from __future__ import annotations

import argparse
import json
import sys

from core.cli import configure_logging, positive_int, renamed_options, run_cli
from core.profiles import MODEL_NAMES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert an MLPerf TF frozen graph (.pb or .tgz) to a PyTorch model file, "
        "verified layer by layer against TensorFlow. Graphs holding anything but pure "
        "tensor ops are refused before TensorFlow runs them.",
    )
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--checkpoint", required=True, help="frozen graph .pb or MLPerf .tgz")
    parser.add_argument(
        "--out", required=True, help="output .pth (a human-readable record goes to the .json)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--verify-images", metavar="DIR", help="verify on these image files")
    source.add_argument(
        "--cache-dir",
        metavar="CACHE",
        help="a preprocess cache (python -m preprocess) whose images the TF comparison uses "
        "in place of synthetic ones; only read, never written",
    )
    parser.add_argument(
        "--verify-limit",
        type=positive_int,
        default=32,
        metavar="N",
        help="verify on at most N images from --verify-images/--cache-dir (default 32)",
    )
    parser.add_argument("--report", metavar="REPORT.json", help="write the full report here")
    parser.add_argument("--no-verify", action="store_true", help="skip the TF comparison")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="if another conversion is writing the same --out, wait for it instead of failing",
    )
    return parser.parse_args(renamed_options(argv, {"--verify-cache": "--cache-dir"}))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.quiet)
    from convert.api import convert_checkpoint

    record = convert_checkpoint(
        args.model,
        args.checkpoint,
        args.out,
        verify_images=args.verify_images,
        verify_cache=args.cache_dir,
        report=args.report,
        verify=not args.no_verify,
        quiet=args.quiet,
        verify_limit=args.verify_limit,
        wait=args.wait,
    )
    if not args.quiet:
        result = {"out": str(record.out), "sidecar": str(record.sidecar), "seconds": record.seconds}
        if verification := record.verification:
            result.update(
                logits_max_abs_diff=verification.logits_max_abs_diff,
                logits_max_rel_diff=verification.logits_max_rel_diff,
            )
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
