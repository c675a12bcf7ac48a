"""ImageNet validation listings: MLPerf's ``val_map.txt`` or torchvision synset folders.

A listing is an ordered list of (relative path, label 0..999). Order matters: MLPerf's
accuracy tool matches query index i with line i of ``val_map.txt``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass, replace
from pathlib import Path

from core.cli import check_at_least_one
from core.errors import UserError

log = logging.getLogger(__name__)

NUM_LABELS = 1000
VAL_MAP_NAME = "val_map.txt"
# torchvision's ImageFolder extensions (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SYNSET_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Listing:
    root: Path  # file names are relative to this folder
    files: list[str]
    labels: list[int]
    source: str  # where the listing came from, for log lines and manifests

    def __len__(self) -> int:
        return len(self.files)


def read_val_map(val_map: Path, root: Path) -> Listing:
    """Parse ``relative/path label`` lines (blank lines ignored), keeping their order.

    Paths are normalised (``./a`` is ``a``); a path that leaves the data dir or repeats an
    earlier line is refused with its line number. A leading UTF-8 BOM is ignored.
    """
    try:
        text = val_map.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise UserError(f"cannot read val map {val_map}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserError(f"val map {val_map} is not a UTF-8 text file") from None
    files, labels = [], []
    first_line_of: dict[str, int] = {}
    # Lines end at \n, \r\n or \r, as for MLPerf's ``for line in open(val_map)``; not
    # str.splitlines, which also splits a file name holding U+2028 or \x1c.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, label = _parse_val_map_line(val_map, number, line)
        if name in first_line_of:
            raise UserError(
                f"{val_map} lines {first_line_of[name]} and {number} both list {name}: "
                f"each image may be listed once"
            )
        first_line_of[name] = number
        files.append(name)
        labels.append(label)
    return Listing(root=root, files=files, labels=labels, source=str(val_map))


def _parse_val_map_line(val_map: Path, number: int, line: str) -> tuple[str, int]:
    parts = line.strip().rsplit(None, 1)
    if len(parts) != 2 or not re.fullmatch(r"[+-]?[0-9]+", parts[1]):
        raise UserError(
            f"{val_map} line {number} is not 'relative/path label': {line.strip()[:80]!r}"
        )
    label = int(parts[1])
    if not 0 <= label < NUM_LABELS:
        raise UserError(f"{val_map} line {number} has label {label}, outside 0-{NUM_LABELS - 1}")
    return _relative_path(val_map, number, parts[0]), label


def _relative_path(val_map: Path, number: int, raw: str) -> str:
    """``raw`` normalised; a UserError if it is absolute or climbs out of the data dir."""
    if "\0" in raw:  # no file system allows one; os.stat would raise ValueError
        raise UserError(
            f"{val_map} line {number} has a NUL byte in its path {raw[:80]!r}: no file can "
            f"have that name"
        )
    if "/" not in raw and raw not in (".", ".."):
        return raw  # a plain file name, as in MLPerf's val_map.txt: nothing to normalise
    if raw.startswith("/"):
        raise UserError(
            f"{val_map} line {number} has an absolute path {raw!r}: paths must be relative "
            f"to the data dir"
        )
    name = posixpath.normpath(raw)
    if name == ".." or name.startswith("../"):
        raise UserError(f"{val_map} line {number} has a path outside the data dir: {raw!r}")
    return name


def _synset_dirs(folder: Path) -> list[str]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(e.name for e in entries if e.is_dir() and _SYNSET_RE.match(e.name))


def read_synset_folders(folder: Path, synsets: list[str]) -> Listing:
    """torchvision layout: label = index of the synset folder in sorted order."""
    if len(synsets) > NUM_LABELS:
        raise UserError(
            f"{folder} has {len(synsets)} synset folders, so labels would exceed 0-{NUM_LABELS - 1}"
        )
    if len(synsets) != NUM_LABELS:
        log.warning(
            "%s has %d synset folders, not %d: labels are indexes among the folders present",
            folder,
            len(synsets),
            NUM_LABELS,
        )
    files, labels = [], []
    for label, synset in enumerate(synsets):
        names = sorted(
            e.name
            for e in os.scandir(folder / synset)
            if e.is_file()
            and not e.name.startswith(".")
            and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        for name in names:
            if "\n" in name:  # files.txt holds one name per line (see preprocess.cache)
                raise UserError(
                    f"{folder / synset} holds a file whose name contains a line break "
                    f"({name!r}): rename or remove it"
                )
        files.extend(f"{synset}/{name}" for name in names)
        labels.extend([label] * len(names))
    return Listing(root=folder, files=files, labels=labels, source=f"synset folders in {folder}")


def list_dataset(
    data_dir: str | os.PathLike,
    val_map: str | os.PathLike | None = None,
    limit: int | None = None,
) -> Listing:
    """Find the listing under ``data_dir`` (or use ``val_map``) and keep the first ``limit``.

    Detection order: an explicit ``val_map``; ``DATA/val_map.txt``; synset folders in
    ``DATA/`` or ``DATA/val/``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data dir {root} does not exist or is not a folder")
    check_at_least_one(limit, "--limit")
    if val_map is not None:
        val_map_path = Path(val_map)
        if not val_map_path.is_file():
            raise UserError(f"val map {val_map_path} does not exist")
        listing = read_val_map(val_map_path, root)
    elif (root / VAL_MAP_NAME).is_file():
        listing = read_val_map(root / VAL_MAP_NAME, root)
    elif synsets := _synset_dirs(root):
        listing = read_synset_folders(root, synsets)
    elif synsets := _synset_dirs(root / "val"):
        listing = read_synset_folders(root / "val", synsets)
    else:
        raise UserError(
            f"{root} has neither {VAL_MAP_NAME} nor synset folders (nXXXXXXXX/ or val/nXXXXXXXX/)"
        )
    if not listing.files:
        raise UserError(f"the listing from {listing.source} holds no images")
    if limit is not None and limit < len(listing):
        listing = replace(listing, files=listing.files[:limit], labels=listing.labels[:limit])
    return listing
