"""The user-facing error type every stage raises for bad input (reported by ``core.cli``)."""

from __future__ import annotations


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message, stripped and cut to ``limit`` characters; ""
    when it has none. Library errors run to pages: a sentence quotes only this much."""
    line = (str(err).strip().splitlines() or [""])[0]
    return line[:limit]


class UserError(Exception):
    """A problem with the user's input, reported as one sentence and a non-zero
    ``exit_code`` (preprocess uses 2 for bad images)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
