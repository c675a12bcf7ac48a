"""Agreement between two predictions files (for example the torch and tf backends).

``python -m eval compare A B [--files CACHE_DIR|NAMES.txt] [--model M] [--strict]`` (or
``python -m eval.compare``): ``A`` and ``B`` are ``predictions.npy`` files or eval output
folders. Prints the agreement and one line per differing image (index in cache order, both
labels, its file name with ``--files``). Exit status 1 only with ``--strict`` and a
difference, or for unusable inputs (one sentence).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from core.cli import run_cli
from core.errors import UserError
from core.profiles import MODEL_NAMES
from eval.results import PREDICTIONS_FILE, RESULTS_FILE


def compare_predictions(a: np.ndarray, b: np.ndarray) -> dict:
    """Two equal-length 1-D label arrays' ``total``, ``agree``, ``differ``, ``percent`` (of
    agreement) and ``differing_indices`` (a list of ints), as a dict."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise UserError(f"predictions must be 1-D label arrays, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise UserError(
            f"the predictions cover different numbers of images ({len(a)} and {len(b)})"
        )
    differing = np.flatnonzero(a != b)
    total = int(a.shape[0])
    agree = total - int(differing.size)
    return {
        "total": total,
        "agree": agree,
        "differ": int(differing.size),
        "percent": 100.0 * agree / total if total else 100.0,
        "differing_indices": [int(i) for i in differing],
    }


def load_predictions(path: str | os.PathLike) -> np.ndarray:
    """Read a predictions.npy file, or the one inside an evaluation output directory."""
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    try:
        predictions = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"cannot read predictions from {path}: {err}") from None
    if not isinstance(predictions, np.ndarray) or not np.issubdtype(predictions.dtype, np.integer):
        kind = getattr(predictions, "dtype", type(predictions).__name__)
        raise UserError(
            f"{path} does not hold predicted labels: expected an integer array, found {kind}"
        )
    return predictions


def cache_fingerprint(path: str | os.PathLike) -> str | None:
    """The ``cache_fingerprint`` in the results.json beside a predictions file (or in an
    eval output folder); None when there is none to read."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        results = json.loads((folder / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    fingerprint = results.get("cache_fingerprint") if isinstance(results, dict) else None
    return fingerprint if isinstance(fingerprint, str) else None


def check_same_cache(a: str | os.PathLike, b: str | os.PathLike) -> None:
    """UserError when both runs record the cache they read and the two differ: index i
    would then be a different image in each, and their agreement means nothing."""
    first, second = cache_fingerprint(a), cache_fingerprint(b)
    if first and second and first != second:
        raise UserError(
            f"{a} and {b} were evaluated on different caches (cache_fingerprint "
            f"{first[:12]}... and {second[:12]}... in their {RESULTS_FILE}): compare runs "
            f"of the same cache"
        )


def load_file_names(source: str | os.PathLike, model_name: str | None = None) -> list[str]:
    """File names in cache order from a cache directory or a one-name-per-line text file."""
    source = Path(source)
    if source.is_file():
        try:
            data = source.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read --files {source} ({err.strerror or err})") from None
        # Names are shown, never opened: bytes that are not UTF-8 are kept (and shown
        # escaped) rather than refused. Lines end at "\n" alone, as in a cache's files.txt.
        lines = data.decode("utf-8", "surrogateescape").split("\n")
        return [line.strip() for line in lines if line.strip()]
    if not source.is_dir():
        raise UserError(f"--files path not found: {source}")
    from preprocess import load_cache

    errors = []
    for name in [model_name] if model_name else MODEL_NAMES:
        try:
            return list(load_cache(source, name).files)
        except UserError as err:
            errors.append(str(err))
    # Prefer the reason that is not merely "built for the other model".
    reason = next((e for e in errors if "was built for" not in e), errors[0])
    raise UserError(f"cannot read file names from cache {source}: {reason}")


def shown_name(name: str) -> str:
    """``name`` as one printable line: bytes that are not UTF-8 as ``\\xff``, line breaks
    and other unprintable characters escaped (printing them raw fails or splits the row)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def format_comparison(
    summary: dict, a: np.ndarray, b: np.ndarray, files: list[str] | None = None
) -> str:
    """The agreement line plus one row per differing image."""
    agreement = f"agreement: {summary['agree']}/{summary['total']} ({summary['percent']:.3f} %)"
    if not summary["differ"]:
        return agreement
    width = max(5, len(str(summary["differing_indices"][-1])))
    file_column = "  file" if files is not None else ""
    lines = [
        agreement,
        f"{summary['differ']} image(s) differ:",
        f"  {'index':>{width}}  {'A':>5}  {'B':>5}{file_column}",
    ]
    for i in summary["differing_indices"]:
        name = f"  {shown_name(files[i])}" if files is not None else ""
        lines.append(f"  {i:>{width}}  {int(a[i]):>5}  {int(b[i]):>5}{name}")
    return "\n".join(lines)


def build_parser(prog: str = "python -m eval compare") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Agreement between two predictions.npy files."
    )
    parser.add_argument("a", help="first predictions.npy (or an eval --out directory)")
    parser.add_argument("b", help="second predictions.npy (or an eval --out directory)")
    parser.add_argument(
        "--files", help="cache directory or text file giving the file name of each index"
    )
    parser.add_argument(
        "--model", choices=MODEL_NAMES, help="the model of the --files cache (default: detect)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when any prediction differs"
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m eval compare") -> int:
    args = build_parser(prog).parse_args(argv)
    a = load_predictions(args.a)
    b = load_predictions(args.b)
    check_same_cache(args.a, args.b)
    summary = compare_predictions(a, b)
    files = None
    if args.files:
        files = load_file_names(args.files, args.model)
        if len(files) < summary["total"]:
            raise UserError(
                f"--files lists {len(files)} names but the predictions cover "
                f"{summary['total']} images"
            )
    print(format_comparison(summary, a, b, files))
    return 1 if args.strict and summary["differ"] else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(lambda argv: main(argv, prog="python -m eval.compare")))
