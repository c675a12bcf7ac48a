"""Agreement between two predictions files, and with labels, MLPerf's verdict on the second.

``python -m eval compare A B [--files CACHE_DIR|NAMES.txt] [--model M] [--strict]`` (or
``python -m eval.compare``): ``A`` and ``B`` are ``predictions.npy`` files (one predicted
label per image, from any harness) or eval output folders. Prints the agreement and one
line per differing image (index in cache order, both labels, its file name with
``--files``). With ``--labels VAL_MAP|CACHE_DIR|LABELS.npy --model M``, ``A`` is the fp32
run and ``B`` the modified model: both top-1s and MLPerf's gate, decided by the function an
evaluation uses (``eval.method.verdict``). ``--json`` prints one JSON object instead.
Exit status 1 with ``--strict`` and a difference, with ``--require-pass`` and a verdict
that is not PASS, or for unusable inputs (one sentence).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cli import run_cli
from core.errors import UserError
from core.profiles import MODEL_NAMES, get_profile
from eval.method.gate import gate_line
from eval.method.verdict import Verdict, judge_predictions
from eval.results import RESULTS_FILE, load_predictions, read_results


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


def cache_fingerprint(path: str | os.PathLike) -> str | None:
    """The ``cache_fingerprint`` in the results.json beside a predictions file (or in an
    eval output folder); None when there is none to read."""
    fingerprint = (read_results(path) or {}).get("cache_fingerprint")
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
    return list(_load_any_cache(source, model_name, "file names").files)


def _load_any_cache(source: Path, model_name: str | None, what: str):
    """The cache in ``source``, for ``model_name`` or whichever model it was built for."""
    from preprocess import load_cache

    errors = []
    for name in [model_name] if model_name else MODEL_NAMES:
        try:
            return load_cache(source, name)
        except UserError as err:
            errors.append(str(err))
    # Prefer the reason that is not merely "built for the other model".
    reason = next((e for e in errors if "was built for" not in e), errors[0])
    raise UserError(f"cannot read {what} from cache {source}: {reason}")


@dataclass
class Labels:
    """The true label of each image, in order, and where they came from."""

    values: np.ndarray
    source: str
    model: str | None = None  # the model a cache was built for
    fingerprint: str | None = None  # a cache's content fingerprint
    files: list[str] | None = None


def load_labels(source: str | os.PathLike, model_name: str | None = None) -> Labels:
    """Labels from a cache directory (checked against its fingerprint), an MLPerf
    val_map.txt (``path label`` lines) or a ``.npy`` of integer labels."""
    path = Path(source)
    if path.is_dir():
        cache = _load_any_cache(path, model_name, "labels")
        labels = np.asarray(cache.labels, dtype=np.int64)
        name = cache.profile.name
        return Labels(labels, f"cache {path}", name, cache.fingerprint, list(cache.files))
    if not path.is_file():
        raise UserError(f"--labels path not found: {path}")
    if path.suffix == ".npy":
        values = load_predictions(path)  # the same checks: a 1-D integer array
        return Labels(np.asarray(values, dtype=np.int64), f"labels file {path}")
    from preprocess.dataset import read_val_map

    listing = read_val_map(path, path.parent)
    values = np.asarray(listing.labels, dtype=np.int64)
    return Labels(values, f"val map {path}", files=list(listing.files))


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


def shown_name(name: str) -> str:
    """``name`` as one printable line: bytes that are not UTF-8 as ``\\xff``, line breaks
    and other unprintable characters escaped (printing them raw fails or splits the row)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def format_verdict(verdict: Verdict, labels: Labels) -> str:
    """Both top-1s and the gate, as the lines above the agreement."""
    gate = verdict.gate
    images = f"{verdict.images:,}"
    if len(labels.values) != verdict.images:
        images += f" (the first of {len(labels.values):,} in {labels.source})"
    flips = verdict.flips
    return "\n".join(
        [
            f"images:      {images}",
            f"top-1 A:     {gate['fp32_top1']:.3f} %  ({verdict.fp32_correct:,} right, fp32)",
            f"top-1 B:     {gate['top1']:.3f} %  ({verdict.correct:,} right, the method)",
            f"MLPerf gate: {gate_line(gate)}",
            f"flips:       {flips['fixed']} fixed, {flips['broken']} broken "
            f"(net {flips['net']:+d})",
        ]
    )


def build_parser(prog: str = "python -m eval compare") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Agreement between two predictions.npy files; with --labels, the top-1 "
        "of each and MLPerf's gate for B (a modified model) against A (its fp32 run).",
    )
    parser.add_argument("a", help="first predictions.npy (or an eval --out directory): fp32")
    parser.add_argument("b", help="second predictions.npy (or an eval --out directory)")
    parser.add_argument(
        "--labels",
        metavar="VAL_MAP_OR_CACHE",
        help="the true labels, in the predictions' order: an MLPerf val_map.txt, a "
        "preprocessed cache directory, or a .npy of integer labels (needs --model unless a "
        "cache names it)",
    )
    parser.add_argument(
        "--files", help="cache directory or text file giving the file name of each index"
    )
    parser.add_argument(
        "--model", choices=MODEL_NAMES, help="the model (its gate; the cache of --files)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when any prediction differs"
    )
    parser.add_argument(
        "--require-pass",
        action="store_true",
        help="with --labels: exit with status 1 unless MLPerf's gate says PASS",
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m eval compare") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.require_pass and not args.labels:
        raise UserError("--require-pass needs --labels: the gate is decided on labelled images")
    a = load_predictions(args.a)
    b = load_predictions(args.b)
    check_same_cache(args.a, args.b)
    summary = compare_predictions(a, b)
    files = _file_names(args, summary["total"])
    verdict, labels = _verdict(args, a, b) if args.labels else (None, None)
    if args.json:
        print(json.dumps(_json_report(summary, verdict, labels, args), indent=2))
    else:
        if verdict is not None:
            print(format_verdict(verdict, labels))
        print(format_comparison(summary, a, b, files))
    failed = args.strict and summary["differ"]
    refused = args.require_pass and verdict.gate["passes"] is not True
    return 1 if failed or refused else 0


def _file_names(args: argparse.Namespace, total: int) -> list[str] | None:
    if not args.files:
        return None
    files = load_file_names(args.files, args.model)
    if len(files) < total:
        raise UserError(
            f"--files lists {len(files)} names but the predictions cover {total} images"
        )
    return files


def _verdict(args: argparse.Namespace, a: np.ndarray, b: np.ndarray) -> tuple[Verdict, Labels]:
    """MLPerf's verdict on B against A over the first len(A) labelled images."""
    labels = load_labels(args.labels, args.model)
    model = args.model or labels.model
    if model is None:
        raise UserError("--labels from a val map or a .npy needs --model (it sets the gate)")
    if args.model and labels.model and labels.model != args.model:
        raise UserError(f"{labels.source} was built for {labels.model}, not --model {args.model}")
    if len(labels.values) < len(a):
        raise UserError(
            f"{labels.source} holds {len(labels.values)} labels but the predictions cover "
            f"{len(a)} images"
        )
    for run in (args.a, args.b):
        recorded = cache_fingerprint(run)
        if labels.fingerprint and recorded and recorded != labels.fingerprint:
            raise UserError(f"{run} was evaluated on another cache than {labels.source}")
    count = len(a)
    files = None if labels.files is None else labels.files[:count]
    return judge_predictions(get_profile(model), labels.values[:count], a, b, files), labels


def _json_report(summary: dict, verdict: Verdict | None, labels: Labels | None, args) -> dict:
    report = {"a": str(args.a), "b": str(args.b), "agreement": summary}
    if verdict is not None:
        report.update(verdict.to_json(), labels=labels.source, model=args.model or labels.model)
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(lambda argv: main(argv, prog="python -m eval.compare")))
