"""Small helpers every stage shares: user-facing errors, atomic writes, hashing, CLI exit.

A leaf module like ``profiles``: it imports nothing of the project, so any stage may use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, reported as one sentence and a non-zero exit.

    ``exit_code`` lets a stage distinguish kinds of failure (preprocess uses 2 for bad images).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it into place only on success.

    Readers never see a half-written file: on any exception the temporary file is removed
    and ``final_path`` is left as it was.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, final_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy_atomic(path: str | os.PathLike, array) -> None:
    """np.save through atomic_path (given a file object: on a path np.save appends .npy)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def configure_logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; turn UserError into one sentence on stderr and its exit code.

    Ctrl-C exits with 130 and a short note instead of a traceback.
    """
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def find_archive_member(tar: tarfile.TarFile, member: str, archive) -> tarfile.TarInfo:
    """The regular-file member named ``member`` (``./member`` too) of an open tar archive.

    One rule for every reader of MLPerf's .tgz (the fetcher, the graph reader): an exact
    name match; a same-named member whose path leaves the archive is refused.
    """
    names = []
    for info in tar:
        name = posixpath.normpath(info.name)
        if name == member:
            if not info.isfile():
                raise UserError(f"member {info.name!r} of {archive} is not a regular file")
            return info
        if posixpath.basename(name) == member:
            # Same file name somewhere else: refuse paths that leave the archive's folder.
            if name.startswith(("/", "../")) or name == "..":
                raise UserError(
                    f"refusing member {info.name!r} of {archive}: its path leaves the archive"
                )
        names.append(info.name)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise UserError(f"{archive} holds no member {member!r} (it holds: {shown or 'nothing'})")
