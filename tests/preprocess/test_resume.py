"""kill -9 in the middle of a build, rerun: no finished work redone, bytes as a clean build."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.images import write_val_set
from preprocess import build_cache
from tests.preprocess.conftest import REPO_ROOT

N_IMAGES = 160


def processes_in_group(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow  # builds, kills and resumes a real process (seconds)
def test_kill_9_then_resume_matches_clean_build(tmp_path, run_preprocess_cli):
    data = tmp_path / "data"
    write_val_set(data, N_IMAGES, sizes=[(375, 500), (500, 375), (333, 517)], seed=5)
    build_cache("resnet50", data, tmp_path / "clean", workers=1, quiet=True)

    cache = tmp_path / "cache"
    args = ["--model", "resnet50", "--data-dir", str(data), "--cache-dir", str(cache)]
    journal = cache / "journal.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "preprocess", *args, "--workers", "2", "--quiet"],
        cwd=REPO_ROOT,
        start_new_session=True,  # its own process group: the test can check nothing lingers
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and len(journal.read_text().splitlines()) >= 3:
                break  # the header and two finished ranges
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # only the main process, as `kill -9 PID` would
        proc.wait(timeout=10)
        # Nothing of the build keeps running (its workers are threads of the killed process).
        deadline = time.monotonic() + 10
        while processes_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_in_group(proc.pid) == []
    finally:
        if processes_in_group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] is False, "the build finished before it could be killed"
    assert not (cache / "images.npy").exists()
    with open(journal, "a") as f:
        f.write("150")  # a torn last line, as a kill during a write could leave

    rerun = run_preprocess_cli(*args, "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming:" in rerun.stderr
    processed = int(re.search(r"\((\d+) processed", rerun.stdout).group(1))
    assert 0 < processed < N_IMAGES
    for name in ("images.npy", "labels.npy", "files.txt"):
        assert (cache / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert not journal.exists() and not (cache / "images.partial.npy").exists()
    assert json.loads((cache / "manifest.json").read_text())["complete"] is True

    noop = run_preprocess_cli(*args, "--quiet")
    assert "nothing to do" in noop.stdout
