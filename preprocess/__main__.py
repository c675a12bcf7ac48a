"""``python -m preprocess``: build (or resume, or confirm) a model's uint8 crop cache."""

from __future__ import annotations

import argparse
import sys

from core.cli import configure_logging, positive_int, run_cli
from core.profiles import MODEL_NAMES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess",
        description="Decode, resize and centre-crop ImageNet validation images exactly as "
        "MLPerf does, into a resumable uint8 cache (one model per cache dir).",
    )
    # Every option's name is a keyword of build_cache.
    parser.add_argument("--model", dest="model_name", required=True, choices=MODEL_NAMES)
    parser.add_argument(
        "--data-dir", required=True, help="folder with val_map.txt or synset folders"
    )
    parser.add_argument("--cache-dir", required=True, help="where the cache is written")
    parser.add_argument("--val-map", help="a val_map.txt elsewhere (paths relative to data dir)")
    parser.add_argument(
        "--limit",
        type=positive_int,
        help="take only the first N listed images (of the list, with --calibration-list)",
    )
    parser.add_argument(
        "--calibration-list",
        metavar="FILE",
        help="cache only the images this MLPerf-format list names (one file name per line, "
        "relative to the data dir, no labels), in its order, each labelled from the data "
        "dir's listing; 'mlperf' for MLPerf's cal_image_list_option_1.txt (shipped). The "
        "result is a --calibration-cache for python -m eval",
    )
    parser.add_argument("--workers", type=positive_int, help="worker threads (default: all cores)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave unreadable images out instead of failing"
    )
    parser.add_argument(
        "--force", action="store_true", help="re-crop every image, even unchanged ones"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="if another build is writing this cache dir, wait for it instead of stopping",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.quiet)
    from preprocess.build import build_cache  # after argparse, so --help stays instant

    print(build_cache(**vars(args)).line())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
