"""One spelling per option across the CLIs; old spellings still work, hidden from --help."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import positive_int, renamed_options

ROOT = Path(__file__).resolve().parents[2]


def test_renamed_options_rewrites_old_spellings_only():
    argv = ["--cache", "a", "--cache-dir=b", "--cache=c", "--cachex", "d"]
    assert renamed_options(argv, {"--cache": "--cache-dir"}) == [
        "--cache-dir",
        "a",
        "--cache-dir=b",
        "--cache-dir=c",
        "--cachex",
        "d",
    ]


@pytest.mark.parametrize("text, value", [("1", 1), ("256", 256)])
def test_positive_int_accepts_counts(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize(
    "text, message", [("0", "at least 1"), ("-3", "at least 1"), ("x", "whole")]
)
def test_positive_int_refuses_what_is_not_a_count(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        positive_int(text)


@pytest.mark.parametrize(
    "module, old, new",
    [
        ("eval", "--cache", "--cache-dir"),
        ("convert", "--verify-cache", "--cache-dir"),
        ("pipeline.fetch", "--dest", "--out"),
        ("benchmarks.bench_inference", "--cache-dir", "--fixture-dir"),
        ("benchmarks.quantization_study", "--seed", "--seeds"),
    ],
)
def test_help_shows_the_new_spelling_only(module, old, new):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    assert new in out.stdout
    assert f"{old} " not in out.stdout and f"{old}\n" not in out.stdout


def test_old_spelling_still_reaches_the_same_option(tmp_path):
    missing = tmp_path / "no-cache"
    argv = ["--model", "resnet50", "--cache", str(missing), "--weights", "w.pth"]
    out = subprocess.run(
        [sys.executable, "-m", "eval", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "--cache is now --cache-dir" in out.stderr
    assert f"error: no preprocessed cache at {missing}" in out.stderr


def test_bench_fixture_folder_keeps_its_old_spelling(tmp_path):
    # --cache-dir means the preprocessed image cache everywhere else; the benchmark's
    # fixture folder is --fixture-dir, and scripts using the old name still reach it.
    from benchmarks.bench_inference import parse_args

    assert parse_args(["--cache-dir", str(tmp_path)]).fixture_dir == tmp_path
    assert parse_args([f"--cache-dir={tmp_path}"]).fixture_dir == tmp_path
    assert parse_args([]).fixture_dir == Path("work/bench/cache")


def test_bench_fixture_folder_that_cannot_be_made_is_one_sentence(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_inference", "--fixture-dir", str(blocker / "x")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    last_line = out.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: cannot create the fixture folder {blocker / 'x'}")
    assert "Traceback" not in out.stderr


def test_check_at_least_one_names_the_option_and_the_value():
    from core.cli import check_at_least_one
    from core.errors import UserError

    check_at_least_one(1, "--limit")
    check_at_least_one(None, "--limit")  # not given: nothing to check
    with pytest.raises(UserError, match=r"^--limit must be at least 1, got 0$"):
        check_at_least_one(0, "--limit")
    with pytest.raises(UserError, match=r"^--workers must be at least 1, got -2$"):
        check_at_least_one(-2, "--workers")


def test_first_line_of_an_error_quotes_one_line():
    from core.errors import first_line

    assert first_line(RuntimeError("  shape mismatch\n  at layer 3\n")) == "shape mismatch"
    assert first_line(RuntimeError("x" * 50), 10) == "x" * 10
    assert first_line(RuntimeError()) == ""  # no message: nothing to quote, no IndexError
