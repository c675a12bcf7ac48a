"""Files written whole or not at all, content digests, and MLPerf's archive member rule.

A leaf like the rest of ``core``: imports nothing of the project outside ``core``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError


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
