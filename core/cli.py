"""The command-line plumbing every stage's ``__main__`` shares."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from core.errors import UserError


def configure_logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def positive_int(text: str) -> int:
    """argparse type for counts such as --batch-size, --limit, --workers: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_at_least_one(value: int | None, name: str) -> None:
    """One UserError sentence for a count below 1 (None: not given, nothing to check): the
    library-level twin of ``positive_int``, for callers that do not come through argparse."""
    if value is not None and value < 1:
        raise UserError(f"{name} must be at least 1, got {value}")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """UserError (one sentence) unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}: expected one of {', '.join(choices)}")


def renamed_options(argv: list[str] | None, renamed: dict[str, str]) -> list[str]:
    """``argv`` with old option spellings (``--old=x`` too), which scripts may still use but
    ``--help`` does not show, replaced by their new names; each use logs a warning."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name in renamed:
            logging.getLogger("cli").warning("%s is now %s", name, renamed[name])
            argv[i] = renamed[name] + sep + value
    return argv


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; UserError becomes one sentence on stderr and its exit code,
    Ctrl-C exit code 130 and a short note, not a traceback."""
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
