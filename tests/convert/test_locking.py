"""One writer per converted model, with real racing processes.

The first conversion is frozen (SIGSTOP) while it holds the lock, so the race is decided
by the test, not by timing: a second conversion to the same --out must fail naming it,
or wait for it with --wait. A killed holder releases the lock with its death, and the next
run removes the temporaries such a kill leaves beside the output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convert import load_checkpoint
from convert.api import remove_stale_outputs

pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parents[2]


def _convert(pb: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    argv = ["--model", "mobilenet_v1", "--checkpoint", str(pb), "--out", str(out), "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "convert", *argv, "--no-verify", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _frozen_holder(pb: Path, out: Path) -> subprocess.Popen:
    """Start a conversion and SIGSTOP it as soon as its lock file names it."""
    lock = out.parent / f".{out.name}.lock"
    holder = _convert(pb, out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and holder.poll() is None:
        if lock.exists() and f"process {holder.pid} " in lock.read_text(errors="replace"):
            holder.send_signal(signal.SIGSTOP)
            return holder
        time.sleep(0.005)
    holder.kill()
    pytest.fail(f"the first conversion never held the lock: {holder.communicate()}")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_second_writer_fails_naming_the_holder_or_waits(mobilenet_v1_pb, tmp_path):
    out = tmp_path / "model.pth"
    holder = _frozen_holder(mobilenet_v1_pb, out)
    try:
        racer = _convert(mobilenet_v1_pb, out)
        _, err = racer.communicate(timeout=120)
        assert racer.returncode == 1
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith(f"error: converted model {out} is in use by process {holder.pid} (")
        )
        assert "--wait" in err and "Traceback" not in err
        assert not out.exists() and _temporaries(tmp_path) == []

        waiter = _convert(mobilenet_v1_pb, out, "--wait")
        time.sleep(1.5)
        assert waiter.poll() is None, waiter.communicate()  # blocked behind the holder
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGCONT)
    assert holder.wait(timeout=120) == 0, holder.communicate()
    _, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert load_checkpoint(out)[1]["model_name"] == "mobilenet_v1"
    assert _temporaries(tmp_path) == []


@pytest.mark.slow
def test_killed_holder_releases_lock_and_its_temporaries_are_removed(mobilenet_v1_pb, tmp_path):
    out = tmp_path / "model.pth"
    holder = _frozen_holder(mobilenet_v1_pb, out)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    # What a kill during the final write leaves, plus another output's temporaries.
    stale = [".model.pth.abcd1234.tmp", ".model.json.x_9Yz0qW.tmp"]
    others = [".model.pth.backup.pth.abcd1234.tmp", ".other.pth.abcd1234.tmp"]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"partial")

    rerun = _convert(mobilenet_v1_pb, out)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert load_checkpoint(out)[1]["model_name"] == "mobilenet_v1"
    assert _temporaries(tmp_path) == sorted(others)


def test_remove_stale_outputs_touches_only_this_outputs_names(tmp_path):
    out = tmp_path / "a.pth"
    mine = [".a.pth.12345678.tmp", ".a.json.abcdefgh.tmp"]
    theirs = [".a.pth.12345678.tmp.tmp", ".b.pth.12345678.tmp", ".a.pth.short.tmp", "a.pth"]
    for name in mine + theirs:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_outputs(out) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


def test_unusable_output_folder_is_one_sentence(mobilenet_v1_pb, tmp_path, capsys):
    """A folder that cannot be created (a file stands in its place) fails before any work."""
    from convert.__main__ import main
    from core.cli import run_cli

    (tmp_path / "taken").write_text("a file, not a folder\n")
    out = tmp_path / "taken" / "m.pth"
    argv = ["--model", "mobilenet_v1", "--checkpoint", str(mobilenet_v1_pb), "--out", str(out)]
    assert run_cli(main, argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write the converted model to {out.parent} (")
    assert len(err.splitlines()) == 1


def test_unusable_report_folder_fails_before_any_output(mobilenet_v1_pb, tmp_path, capsys):
    """A --report that cannot be written is one sentence, and no model file is left behind."""
    from convert.__main__ import main
    from core.cli import run_cli

    (tmp_path / "taken").write_text("a file, not a folder\n")
    report = tmp_path / "taken" / "report.json"
    out = tmp_path / "m.pth"
    argv = ["--model", "mobilenet_v1", "--checkpoint", str(mobilenet_v1_pb), "--out", str(out)]
    assert run_cli(main, [*argv, "--no-verify", "--report", str(report)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write to {report.parent} (") and "--report" in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
