"""The user-facing error type every stage raises for bad input (reported by ``core.cli``)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one sentence and a non-zero
    ``exit_code`` (preprocess uses 2 for bad images)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
