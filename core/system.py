"""What the machine gives this process: the usable cores, and scoped process settings."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def temporarily(get: Callable[[], Any], set_to: Callable[[Any], Any], value: Any) -> Iterator[None]:
    """``set_to(value)`` while inside; on leaving, the value ``get()`` gave before (a
    library's process-wide setting, such as its thread count)."""
    before = get()
    set_to(value)
    try:
        yield
    finally:
        set_to(before)
