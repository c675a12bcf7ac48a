"""The calibration set: the images a modified model (int8, a user's transform) may look at.

MLPerf lets a quantized submission calibrate only on a published list of validation images
(``cal_image_list_option_1.txt``: 500 file names, one per line, relative to the data dir, no
labels), shipped here in ``data/``. A list selects images of the data dir's own listing, each
with its label from there, and ``build_cache(calibration_list=...)`` crops them with the same
recipe and the same trust rules as the evaluation cache.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from core.cli import check_at_least_one
from core.errors import UserError
from preprocess.dataset import Listing, list_dataset

# MLPerf's calibration list for ImageNet (mlcommons/inference, calibration/ImageNet/), and
# the sha256 of its published bytes: an edited copy is refused rather than reported as
# MLPerf's list.
MLPERF_LIST = Path(__file__).resolve().parent / "data" / "cal_image_list_option_1.txt"
MLPERF_LIST_SHA256 = "7662247d1d9407d6cb564268f64c5a4a6cf9f1a34fd2e6cdc3b94dcf278b3dc9"
# The word that names the shipped list where a list file is asked for (--calibration-list).
MLPERF_LIST_WORD = "mlperf"
# Without a usable list: the first this many images of the evaluation listing.
DEFAULT_CALIBRATION_IMAGES = 500
NOT_MLPERF_NOTE = "calibrated on evaluation images, not MLPerf's list"


@dataclass(frozen=True)
class CalibrationList:
    """One list file: its names in order, and what identifies it."""

    path: Path
    names: list[str]
    sha256: str

    @property
    def is_mlperf(self) -> bool:
        return self.sha256 == MLPERF_LIST_SHA256


class MissingCalibrationImages(UserError):
    """The data dir's listing lacks images the list names: a data dir that is not the one
    the list was made for (the pipeline then calibrates on evaluation images instead)."""


def read_calibration_list(path: str | os.PathLike) -> CalibrationList:
    """Parse an MLPerf-format list: one relative name per line, blank lines ignored.

    A line holding a label as well (a val_map) or an unusable name is refused with its line
    number, as are repeated names: calibrating twice on one image is not MLPerf's set.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read calibration list {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"calibration list {path} is not a UTF-8 text file") from None
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        name = line.strip()
        if not name:
            continue
        _check_name(path, number, name)
        if name in seen:
            raise UserError(
                f"{path} lines {seen[name]} and {number} both list {name}: "
                "each calibration image may be listed once"
            )
        seen[name] = number
        names.append(name)
    if not names:
        raise UserError(f"calibration list {path} names no images")
    return CalibrationList(path, names, hashlib.sha256(data).hexdigest())


def _check_name(path: Path, number: int, name: str) -> None:
    where = f"{path} line {number}"
    if "\0" in name or "\r" in name:
        raise UserError(f"{where} holds a control character: one file name per line")
    parts = name.rsplit(None, 1)
    if len(parts) == 2 and parts[1].lstrip("+-").isdigit():
        raise UserError(
            f"{where} looks like a val_map line ({name[:60]!r}): a calibration list holds "
            "file names only, no labels"
        )
    if name.startswith("/") or name == ".." or name.startswith("../") or "/../" in name:
        raise UserError(f"{where} names {name!r}, which is not inside the data dir")


def mlperf_list() -> CalibrationList:
    """The shipped MLPerf list, checked against its published digest."""
    listed = read_calibration_list(MLPERF_LIST)
    if not listed.is_mlperf:
        raise UserError(
            f"{MLPERF_LIST} is not MLPerf's published calibration list (its sha256 changed): "
            "restore it from the project's repository"
        )
    return listed


def load_calibration_list(source: str | os.PathLike) -> CalibrationList:
    """The list ``source`` names: a list file, or the word ``mlperf`` for the shipped list
    (a file of that name is ``./mlperf``)."""
    if os.fspath(source) == MLPERF_LIST_WORD:
        return mlperf_list()
    return read_calibration_list(source)


def list_calibration_images(
    source: str | os.PathLike,
    data_dir: str | os.PathLike,
    val_map: str | os.PathLike | None = None,
    limit: int | None = None,
) -> Listing:
    """The listing a calibration cache holds: the images of list ``source`` (a file or
    ``mlperf``) in list order, labelled from the data dir's listing; the first ``limit``."""
    check_at_least_one(limit, "--limit")
    listing = calibration_listing(load_calibration_list(source), data_dir, val_map)
    if limit is None or limit >= len(listing):
        return listing
    return replace(listing, files=listing.files[:limit], labels=listing.labels[:limit])


def calibration_listing(
    listed: CalibrationList, data_dir: str | os.PathLike, val_map: str | os.PathLike | None
) -> Listing:
    """The list's images in list order, each with its label from the data dir's listing;
    a name the listing lacks is one sentence naming it."""
    full = list_dataset(data_dir, val_map=val_map)
    label_of = dict(zip(full.files, full.labels, strict=True))
    missing = [name for name in listed.names if name not in label_of]
    if missing:
        raise MissingCalibrationImages(_missing_images_message(listed, missing, full.source))
    labels = [label_of[name] for name in listed.names]
    return Listing(root=full.root, files=list(listed.names), labels=labels, source=str(listed.path))


def _missing_images_message(listed: CalibrationList, missing: list[str], source: str) -> str:
    which = "MLPerf's calibration list" if listed.is_mlperf else "calibration list"
    fix = (
        "it names ImageNet validation images, so give the ImageNet val data dir or a list of "
        "your own"
        if listed.is_mlperf
        else "give a list of images from this data dir"
    )
    return (
        f"{len(missing)} of the {len(listed.names)} images in {which} {listed.path} are not "
        f"in the listing of {source} (first: {missing[0]}); {fix}"
    )
