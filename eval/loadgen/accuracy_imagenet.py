"""Score a LoadGen accuracy log the way MLPerf's ImageNet accuracy tool does.

Each entry of ``mlperf_log_accuracy.json`` holds ``qsl_idx`` and ``data``, the hex of the
response: the predicted label as one little-endian float32. It is right when it equals
line ``qsl_idx`` of ``val_map.txt``; a sample answered twice counts once (its first answer).
Standalone: ``python -m eval.accuracy_imagenet --mlperf-accuracy-file LOG (--val-map
val_map.txt | --cache-dir CACHE)``. Scoring needs only numpy (no LoadGen, torch or eval).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cli import configure_logging, renamed_options, run_cli
from core.errors import UserError

log = logging.getLogger(__name__)

# Response encodings the reference tool accepts (``--dtype``); ImageNet uses float32.
RESPONSE_DTYPES = {"float32": "<f4", "int32": "<i4", "int64": "<i8"}


@dataclass(frozen=True)
class AccuracyScore:
    good: int
    total: int

    @property
    def top1(self) -> float:
        return 100.0 * self.good / self.total if self.total else 0.0

    def line(self) -> str:
        """The reference tool's result line, e.g. ``accuracy=74.000%, good=37, total=50``."""
        return f"accuracy={self.top1:.3f}%, good={self.good}, total={self.total}"


def read_accuracy_log(path: str | os.PathLike) -> list[dict]:
    """Load ``mlperf_log_accuracy.json`` as a list of entries, checking its shape."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"the LoadGen accuracy log {path} does not exist") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the LoadGen accuracy log {path}: {err}") from None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "qsl_idx" in e and "data" in e for e in entries
    ):
        raise UserError(
            f"{path} is not a LoadGen accuracy log (expected a JSON list of "
            '{"seq_id", "qsl_idx", "data"} entries)'
        )
    return entries


def score_accuracy_log(
    path: str | os.PathLike, labels: np.ndarray, dtype: str = "float32"
) -> AccuracyScore:
    """Score an ``mlperf_log_accuracy.json`` against labels indexed by qsl_idx."""
    entries = read_accuracy_log(path)
    labels = np.asarray(labels)
    seen: set[int] = set()
    good = 0
    for entry in entries:
        idx = int(entry["qsl_idx"])
        if idx in seen:
            continue
        if not 0 <= idx < len(labels):
            raise UserError(
                f"the accuracy log names sample {idx} but the labels cover only "
                f"{len(labels)} images: the log and the labels are from different data sets"
            )
        seen.add(idx)
        try:
            data = np.frombuffer(bytes.fromhex(entry["data"]), dtype=RESPONSE_DTYPES[dtype])
        except ValueError:
            raise UserError(f"sample {idx} has data that is not valid hex") from None
        if data.size == 0:
            raise UserError(
                f"sample {idx} has an empty response in the accuracy log: the run that "
                "wrote it failed"
            )
        if data[0] == labels[idx]:
            good += 1
    return AccuracyScore(good=good, total=len(seen))


def labels_from_val_map(path: str | os.PathLike) -> np.ndarray:
    """Labels from an MLPerf ``val_map.txt``, parsed (and checked) as the preprocess stage does."""
    from preprocess.dataset import read_val_map

    path = Path(path)
    return np.asarray(read_val_map(path, path.parent).labels, dtype=np.int64)


def labels_from_cache(path: str | os.PathLike) -> np.ndarray:
    """Labels from a preprocessed cache: the folder's ``labels.npy`` (or that file itself)."""
    from preprocess.cache import LABELS_NAME

    path = Path(path)
    labels_path = path / LABELS_NAME if path.is_dir() else path
    try:
        return np.load(labels_path, mmap_mode="r")
    except FileNotFoundError:
        raise UserError(f"no labels found: {labels_path} does not exist") from None
    except ValueError as err:
        raise UserError(f"cannot read labels from {labels_path}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.accuracy_imagenet",
        description="Score a LoadGen mlperf_log_accuracy.json like MLPerf's ImageNet tool.",
    )
    parser.add_argument("--mlperf-accuracy-file", required=True, type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--val-map", type=Path, help="MLPerf val_map.txt (labels by line)")
    source.add_argument("--cache-dir", type=Path, help="preprocessed cache (its labels.npy)")
    parser.add_argument("--dtype", choices=sorted(RESPONSE_DTYPES), default="float32")
    parser.add_argument("--quiet", action="store_true", help="only print the result line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(renamed_options(argv, {"--cache": "--cache-dir"}))
    configure_logging(args.quiet)
    if args.val_map:
        labels = labels_from_val_map(args.val_map)
    else:
        labels = labels_from_cache(args.cache_dir)
    score = score_accuracy_log(args.mlperf_accuracy_file, labels, args.dtype)
    if score.total < len(labels):
        log.info("the log covers %d of %d labelled images", score.total, len(labels))
    print(score.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
