"""core.files: locks that name their holder and die with it, temp cleanup, free space."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import UserError
from core.files import (
    atomic_path,
    check_free_space,
    exclusive_lock,
    file_lock,
    remove_stale_temporaries,
    temporaries_of,
    temporary_target,
    write_text_atomic,
)

ROOT = Path(__file__).resolve().parents[2]

HOLD_LOCK = """
import sys, time
from core.files import exclusive_lock
with exclusive_lock(sys.argv[1], "cache dir"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock_in_child(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_held_lock_names_its_holder_and_dies_with_it(tmp_path):
    child = _hold_lock_in_child(tmp_path)
    try:
        with pytest.raises(
            UserError, match=rf"cache dir {tmp_path} is in use by process {child.pid}"
        ):
            with exclusive_lock(tmp_path, "cache dir"):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The OS released the killed holder's lock: the lock file left behind blocks nobody.
    assert (tmp_path / ".lock").exists()
    with exclusive_lock(tmp_path, "cache dir"):
        assert f"process {os.getpid()}" in (tmp_path / ".lock").read_text()


def test_wait_blocks_until_the_holder_is_gone(tmp_path):
    child = _hold_lock_in_child(tmp_path)
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -9 {child.pid}"])
    with exclusive_lock(tmp_path, "cache dir", wait=True):
        assert time.monotonic() - started >= 0.4
    child.wait()


def test_file_lock_guards_one_file_not_its_folder(tmp_path):
    out = tmp_path / "model.pth"
    with file_lock(out, "converted model"):
        with pytest.raises(UserError, match=f"converted model {out} is in use"):
            with file_lock(out, "converted model"):
                pass
        with file_lock(tmp_path / "other.pth", "converted model"):
            pass  # another output in the same folder is not blocked


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    kept = tmp_path / "images.npy"
    kept.write_bytes(b"real")
    (tmp_path / ".images.npy.abc123de.tmp").write_bytes(b"half")
    (tmp_path / ".manifest.json.x_9Yz0qW.tmp").write_bytes(b"half")
    (tmp_path / ".notes.tmp").write_bytes(b"not a temporary atomic_path makes")
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "images.npy"]


def test_temporaries_are_told_apart_by_the_name_atomic_path_gives_them(tmp_path):
    target = tmp_path / "a.pth"
    with atomic_path(target) as tmp:  # the real name, as mkstemp makes it
        assert temporary_target(tmp.name) == "a.pth" and temporaries_of(target) == [tmp]
    assert temporaries_of(target) == []
    for name in [".a.pth.12345678.tmp.tmp", ".a.pth.short.tmp", ".b.pth.12345678.tmp"]:
        assert temporary_target(name) != "a.pth", name
    assert temporary_target(".a.pth.backup.pth.abcd1234.tmp") == "a.pth.backup.pth"
    assert temporary_target("a.pth") is None


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new, half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_gives_plain_open_modes_without_setting_the_umask(tmp_path, monkeypatch):
    """Setting the umask, even for a moment, would give files other threads create 0666."""
    saved = os.umask(0o027)
    try:
        (tmp_path / "plain").write_text("x")
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail(f"os.umask({mask:o}) called"))
        write_text_atomic(tmp_path / "atomic", "x")
    finally:
        monkeypatch.undo()
        os.umask(saved)
    modes = [(tmp_path / name).stat().st_mode & 0o777 for name in ("plain", "atomic")]
    assert modes == [0o640, 0o640]


def test_free_space_check_says_needed_and_available(tmp_path):
    check_free_space(tmp_path, 1, "a test")
    with pytest.raises(UserError, match=r"not enough disk space in .* for 9 crops: it needs"):
        check_free_space(tmp_path, 1 << 62, "9 crops")
