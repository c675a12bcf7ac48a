"""Files written whole or not at all, content digests, locks, and MLPerf's archive rule."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.disk import disk_full_says
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


# tempfile.mkstemp/mkdtemp name a file PREFIX + 8 random letters, digits or "_" + SUFFIX
# (tests check atomic_path's real names against this), so atomic_path's temporaries are
# ".NAME.XXXXXXXX.tmp". This one rule says which leftovers are whose.
_TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp")


def temporary_target(name: str) -> str | None:
    """The file name whose atomic_path temporary ``name`` is, or None when it is none."""
    match = _TEMPORARY_NAME.fullmatch(name)
    return match["target"] if match else None


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """The atomic_path temporaries of ``path`` beside it (left by writers that died)."""
    path = Path(path)
    return sorted(p for p in path.parent.glob(".*.tmp") if temporary_target(p.name) == path.name)


def _current_umask() -> int:
    """The process umask, read without setting it: ``os.umask`` can only read it by setting
    it, and for that moment files that other threads create would get the wrong mode."""
    mask = _umask_from_proc()
    return mask if mask is not None else _UMASK_AT_IMPORT


def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return None


# Without /proc, the umask is read the only other way, by setting it, once while the module
# loads (a umask of 0 is a value, not a missing one).
_UMASK_AT_IMPORT = _umask_from_proc()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = os.umask(0)
    os.umask(_UMASK_AT_IMPORT)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy_atomic(path: str | os.PathLike, array) -> None:
    """np.save through atomic_path (given a file object: on a path np.save appends .npy)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to the disk (before a rename that makes it the real file)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def create_reserved_npy(path: str | os.PathLike, shape: tuple, what: str) -> None:
    """A zero uint8 .npy whose blocks are all allocated now: a full disk under a memmap
    write would kill the process with SIGBUS; here it is a UserError before any work."""
    import numpy as np
    from numpy.lib.format import open_memmap

    path = Path(path)
    open_memmap(path, mode="w+", dtype=np.uint8, shape=shape).flush()
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            with disk_full_says(
                f"not enough disk space in {path.parent} for {what} ({size / 1e6:,.1f} MB): "
                "free some space and rerun the same command to continue"
            ):
                os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            block = bytes(1 << 20)  # no fallocate here: allocate by writing zeros
            for offset in range(0, size, len(block)):
                os.pwrite(fd, block[: size - offset], offset)
    finally:
        os.close(fd)


def copy_npy_rows(source, target, target_rows, source_rows, block: int = 256) -> None:
    """``target[target_rows] = source[source_rows]`` between two .npy files, ``block`` rows
    at a time through memory maps."""
    import numpy as np

    old = np.load(source, mmap_mode="r")
    new = np.load(target, mmap_mode="r+")
    for j in range(0, len(target_rows), block):
        new[target_rows[j : j + block]] = old[source_rows[j : j + block]]
    new.flush()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


GZIP_MAGIC = b"\x1f\x8b"


def is_archive_name(name: str | os.PathLike) -> bool:
    """Whether a file name says tar archive (MLPerf ships MobileNet as a ``.tgz``)."""
    return str(name).lower().endswith((".tgz", ".tar.gz", ".tar"))


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
            # Same file name elsewhere: never returned (only an exact match is), so this only
            # changes the error, to name the hostile path (and it ends the search there).
            if name.startswith(("/", "../")) or name == "..":
                raise UserError(
                    f"refusing member {info.name!r} of {archive}: its path leaves the archive"
                )
        names.append(info.name)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise UserError(f"{archive} holds no member {member!r} (it holds: {shown or 'nothing'})")


LOCK_NAME = ".lock"


def exclusive_lock(folder: str | os.PathLike, what: str, *, wait: bool = False):
    """Hold ``folder/.lock`` exclusively while the block runs: one writer per folder.

    ``what`` names the folder in the error, e.g. "cache dir". See ``_held_lock``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _held_lock(folder / LOCK_NAME, folder, what, wait)


def file_lock(path: str | os.PathLike, what: str, *, wait: bool = False):
    """Hold ``.NAME.lock`` beside ``path`` exclusively: one writer of that one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _held_lock(path.parent / f".{path.name}.lock", path, what, wait)


@contextlib.contextmanager
def _held_lock(lock_path: Path, guarded: Path, what: str, wait: bool) -> Iterator[None]:
    """An fcntl lock on ``lock_path``: the OS releases it when the holder dies (kill -9
    included), so a stale lock file never blocks anyone. The holder writes its pid and
    command line into the file, so a second process can say who holds it. Without ``wait``
    a held lock is a UserError naming that process; with ``wait`` the call blocks."""
    import fcntl
    import sys

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"{what} {guarded} is in use by {holder}: wait for it to finish, "
                f"or rerun with --wait to wait for it"
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
        os.pwrite(fd, f"process {os.getpid()} ({command})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the atomic_path temporaries a killed writer left in ``folder``; return how many.

    Call it only while holding ``exclusive_lock(folder)``: then no live writer owns them.
    """
    stale = [p for p in Path(folder).glob(".*.tmp") if temporary_target(p.name) is not None]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """UserError, before any long work, when ``folder``'s file system cannot hold the output."""
    import shutil

    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise UserError(
            f"not enough disk space in {folder} for {what}: it needs {needed_bytes / 1e9:.2f} GB "
            f"and {free / 1e9:.2f} GB are free"
        )


def check_output_dir(out_dir: str | os.PathLike, option: str = "--out") -> None:
    """UserError unless ``out_dir`` exists (or can be made) and a file can be written in it."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise UserError(
            f"cannot write to {out_dir} ({err.strerror or err}): choose a writable {option}"
        ) from None
