"""A full disk, said as one sentence: the one place that knows ENOSPC and EDQUOT."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from core.errors import UserError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left, disk quota exceeded


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the file system (or the user's quota on it) is full."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


@contextlib.contextmanager
def disk_full_says(message: str) -> Iterator[None]:
    """Turn a full disk met inside the block into ``UserError(message)``; any other error
    passes unchanged. ``message`` says what was kept and how to go on."""
    try:
        yield
    except OSError as err:
        if is_disk_full(err):
            raise UserError(message) from None
        raise
