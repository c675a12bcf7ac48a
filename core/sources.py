"""Digests of source code: a stage's record names the code that made its output, so a change
to that code redoes the stage instead of reusing what older code made."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# The project's root: the folder holding core/, preprocess/, convert/, ...
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def source_digest(*packages: str, root: str | os.PathLike = PROJECT_ROOT) -> str:
    """sha256 over every ``.py`` file of ``packages`` (folders under ``root``): their paths
    relative to ``root`` and their bytes, in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()
