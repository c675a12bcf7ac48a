"""Take the frozen graph out of MLPerf's ``.tgz``: that one member, by a safe path, checked."""

from __future__ import annotations

import logging
import shutil
import tarfile
import zlib
from pathlib import Path

from core.disk import is_disk_full
from core.errors import UserError
from core.files import atomic_path, find_archive_member
from core.profiles import ModelProfile
from pipeline.trust import NotTheModelError, check_is_model, plainly_not_a_graph, write_record

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20


def extract_graph(
    archive: Path,
    archive_sha: str | None,
    member: str,
    final: Path,
    profile: ModelProfile,
    *,
    origin: str,
) -> Path:
    """Extract only ``member`` (stored as ``name`` or ``./name``) from ``archive`` to ``final``,
    and record it, with the source the archive came from, only once it parsed as
    ``profile``'s frozen graph. An unreadable archive is a NotTheModelError."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            found = find_archive_member(tar, member, archive)  # a regular file, safe path
            with tar.extractfile(found) as source, atomic_path(final) as tmp:
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_SIZE)
                if tmp.stat().st_size != found.size:
                    raise EOFError(f"{found.name} is short")
                check_is_model(tmp, profile, shown=f"{archive}:{found.name}")
    except OSError as err:
        if is_disk_full(err):
            raise  # the caller says so; the archive is kept and reused
        if err.errno is not None:  # a system error (permissions, I/O), not the archive's fault
            raise UserError(
                f"cannot extract {member} from {archive} to {final} ({err.strerror})"
            ) from None
        raise _unreadable(archive, err) from None
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise _unreadable(archive, err) from None
    write_record(
        final,
        source=f"{archive}:{found.name}",
        archive_sha256=archive_sha,
        member=found.name,
        origin=origin,
    )
    logger.info("extracted %s from %s", final.name, archive)
    return final


def _unreadable(archive: Path, err: Exception) -> NotTheModelError:
    logger.debug("reading %s failed: %s", archive, err)
    return plainly_not_a_graph(archive, str(archive)) or NotTheModelError(
        f"{archive} is not a readable .tgz archive (corrupt or truncated)"
    )
