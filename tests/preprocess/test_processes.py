"""Real processes against one cache dir: racing builds, --wait, kill -9 during an in-place
update, a full disk (injected ENOSPC, and a real small tmpfs where it can be mounted)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.images import textured_image, write_bad_files, write_image, write_val_set
from preprocess import build_cache, load_cache
from tests.conftest import mounted_tmpfs
from tests.preprocess.conftest import REPO_ROOT

SIZES = [(200, 260), (260, 200), (256, 256)]
CONTENT = ("images.npy", "digests.npy", "labels.npy", "files.txt")

# Runs the real CLI after a patch (given as code) is applied in that process.
PATCHED_CLI = """
import sys
{patch}
from core.cli import run_cli
from preprocess.__main__ import main
sys.exit(run_cli(main, sys.argv[1:]))
"""
SLOW_RANGES = """
import time, preprocess.workers as workers
_original = workers.RangeProcessor.__call__
def _slow(self, start, stop):
    time.sleep({delay})
    return _original(self, start, stop)
workers.RangeProcessor.__call__ = _slow
"""
NO_SPACE = """
import errno, os
_calls = []
def _fallocate(fd, offset, length):
    _calls.append(length)
    if len(_calls) >= {fail_from_call}:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.posix_fallocate = _fallocate
"""


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("procs")
    write_val_set(root / "data", 24, sizes=SIZES, seed=6)
    return root / "data"


@pytest.fixture
def data(image_set, tmp_path):
    shutil.copytree(image_set, tmp_path / "data")
    return tmp_path / "data"


def cli_args(model, data, cache_dir, *extra):
    return ["--model", model, "--data-dir", str(data), "--cache-dir", str(cache_dir), *extra]


def start_patched(patch: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PATCHED_CLI.format(patch=patch), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_patched(patch: str, *args: str) -> subprocess.CompletedProcess:
    proc = start_patched(patch, *args)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def holds_lock(cache_dir: Path) -> bool:
    lock = cache_dir / ".lock"
    return lock.exists() and lock.read_text().startswith("process ")


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_same_cache(cache_dir: Path, clean_dir: Path) -> None:
    for name in CONTENT:
        assert (cache_dir / name).read_bytes() == (clean_dir / name).read_bytes(), name
    leftovers = [p.name for p in cache_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [] and not (cache_dir / "journal.txt").exists()
    assert not list(cache_dir.glob("*.partial.npy"))


def clean_build(model, data, folder, **kwargs):
    return build_cache(model, data, folder, workers=2, quiet=True, force=True, **kwargs)


def test_second_build_on_a_held_cache_dir_stops_and_names_the_holder(data, tmp_path):
    cache_dir = tmp_path / "c"
    slow = SLOW_RANGES.format(delay=0.3)
    first = start_patched(slow, *cli_args("resnet50", data, cache_dir, "--workers", "1"))
    try:
        wait_for(lambda: holds_lock(cache_dir), "the first build to take the lock")
        second = subprocess.run(
            [sys.executable, "-m", "preprocess", *cli_args("mobilenet_v1", data, cache_dir)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.poll() is None, "the first build ended before the second tried"
    finally:
        out, err = first.communicate(timeout=120)
    assert second.returncode == 1
    [line] = error_lines(second.stderr)
    assert re.fullmatch(
        rf"error: cache dir {re.escape(str(cache_dir))} is in use by process {first.pid} "
        r"\(.*--model resnet50.*\): wait for it to finish, or rerun with --wait to wait for it",
        line,
    ), line
    assert second.stdout == ""
    assert first.returncode == 0, err
    clean_build("resnet50", data, tmp_path / "clean")
    assert_same_cache(cache_dir, tmp_path / "clean")
    assert load_cache(cache_dir, "resnet50").manifest["complete"]


def test_with_wait_the_second_build_runs_after_the_first(data, tmp_path):
    cache_dir = tmp_path / "c"
    slow = SLOW_RANGES.format(delay=0.2)
    first = start_patched(slow, *cli_args("resnet50", data, cache_dir, "--workers", "1"))
    wait_for(lambda: holds_lock(cache_dir), "the first build to take the lock")
    second = start_patched("", *cli_args("mobilenet_v1", data, cache_dir, "--wait", "--quiet"))
    first_out, first_err = first.communicate(timeout=120)
    second_out, second_err = second.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert "24 images cached" in first_out and "24 images cached" in second_out
    clean_build("mobilenet_v1", data, tmp_path / "clean")
    assert_same_cache(cache_dir, tmp_path / "clean")  # the waiting build ran last, whole


def test_kill_9_during_an_in_place_update_resumes_to_the_same_bytes(data, tmp_path):
    cache_dir = tmp_path / "c"
    args = cli_args("resnet50", data, cache_dir, "--workers", "1")
    build_cache("resnet50", data, cache_dir, workers=2, quiet=True)
    for i in range(8, 20):  # rows 8-19 change; 0-7 and 20-23 are reused in place
        write_image(data / f"ILSVRC2012_val_{i + 1:08d}.JPEG", textured_image(230, 190, i + 40))
    proc = start_patched(SLOW_RANGES.format(delay=0.2), *args)
    journal = cache_dir / "journal.txt"
    try:  # header, the two reused ranges, then one re-cropped range
        wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 4, "a range")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((cache_dir / "manifest.json").read_text())["complete"] is False
    stale = cache_dir / ".labels.npy.k1ll3d00.tmp"  # what a kill inside atomic_path leaves
    stale.write_bytes(bytes(1000))

    rerun = subprocess.run(
        [sys.executable, "-m", "preprocess", *args], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 1 temporary file(s)" in rerun.stderr and "resuming:" in rerun.stderr
    processed = int(re.search(r"\((\d+) processed", rerun.stdout).group(1))
    assert 0 < processed < 12
    clean_build("resnet50", data, tmp_path / "clean")
    assert_same_cache(cache_dir, tmp_path / "clean")


def test_no_space_for_the_crops_is_one_sentence_and_a_rerun_works(data, tmp_path):
    cache_dir = tmp_path / "c"
    args = cli_args("resnet50", data, cache_dir, "--quiet")
    full = run_patched(NO_SPACE.format(fail_from_call=1), *args)
    assert full.returncode == 1
    assert error_lines(full.stderr) == [
        f"error: not enough disk space in {cache_dir} for 24 crops (3.6 MB): free some space "
        f"and rerun the same command to continue"
    ]
    assert not (cache_dir / "images.npy").exists()
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]
    rerun = run_patched("", *args)
    assert rerun.returncode == 0, rerun.stderr
    clean_build("resnet50", data, tmp_path / "clean")
    assert_same_cache(cache_dir, tmp_path / "clean")


def test_no_space_when_leaving_out_bad_files_is_no_sigbus(data, tmp_path):
    """The last step of a --skip-bad build writes a second, smaller file: once a SIGBUS."""
    bad = write_bad_files(data / "bad")
    with open(data / "val_map.txt", "a") as f:
        f.writelines(f"bad/{name} 1\n" for name in bad)
    cache_dir = tmp_path / "c"
    args = cli_args("resnet50", data, cache_dir, "--skip-bad", "--quiet")
    full = run_patched(NO_SPACE.format(fail_from_call=2), *args)
    assert full.returncode == 1, full.stderr
    assert error_lines(full.stderr) == [
        f"error: not enough disk space in {cache_dir} for 24 crops (3.6 MB): free some space "
        f"and rerun the same command to continue"
    ]
    assert not (cache_dir / "images.npy").exists()
    rerun = run_patched("", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "(4 processed" in rerun.stdout  # only the unreadable files are tried again
    clean_build("resnet50", data, tmp_path / "clean", skip_bad=True)
    assert_same_cache(cache_dir, tmp_path / "clean")


def test_free_space_is_checked_before_any_work(data, tmp_path):
    cache_dir = tmp_path / "c"
    tiny = (
        "import shutil, collections\n"
        "shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')(1, 1, 10**6)"
    )
    result = run_patched(tiny, *cli_args("resnet50", data, cache_dir, "--quiet"))
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert line.startswith(f"error: not enough disk space in {cache_dir} for 24 crops: it needs")
    assert not list(cache_dir.glob("*.npy"))


def test_no_space_for_a_forced_rebuild_leaves_a_cache_dir_a_rerun_accepts(data, tmp_path):
    """--force drops the finished cache before its space check; what it leaves must still
    be recognised as this tool's folder, not refused as someone else's files."""
    cache_dir = tmp_path / "c"
    build_cache("resnet50", data, cache_dir, workers=2, quiet=True)
    tiny = (
        "import shutil, collections\n"
        "shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')(1, 1, 10**6)"
    )
    forced = run_patched(tiny, *cli_args("resnet50", data, cache_dir, "--force", "--quiet"))
    assert forced.returncode == 1
    [line] = error_lines(forced.stderr)
    assert line.startswith(f"error: not enough disk space in {cache_dir} for 24 crops: it needs")
    rerun = run_patched("", *cli_args("resnet50", data, cache_dir, "--quiet"))
    assert rerun.returncode == 0, rerun.stderr
    clean_build("resnet50", data, tmp_path / "clean")
    assert_same_cache(cache_dir, tmp_path / "clean")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs (root only); skipped where mounting is not allowed."""
    with mounted_tmpfs(tmp_path / "tmpfs", 3) as mount_point:
        yield mount_point


def test_real_full_disk_with_skip_bad_then_more_space(tmp_path, small_tmpfs):
    data = tmp_path / "data"
    entries = write_val_set(data, 12, sizes=SIZES, seed=9)
    (data / "bad").mkdir()
    (data / "bad" / "a.JPEG").write_text("no image")
    (data / "bad" / "b.JPEG").write_bytes(b"")
    lines = [f"{f} {lab}\n" for f, lab in entries] + ["bad/a.JPEG 1\n", "bad/b.JPEG 2\n"]
    (data / "val_map.txt").write_text("".join(lines))
    cache_dir = small_tmpfs / "cache"
    args = ["-m", "preprocess", *cli_args("resnet50", data, cache_dir, "--skip-bad", "--quiet")]
    full = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert full.returncode == 1  # 14 crops fit, the 12 kept ones do not fit beside them
    [line] = error_lines(full.stderr)
    assert line.startswith(f"error: not enough disk space in {cache_dir} for the 12 readable")
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)
    rerun = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    clean_build("resnet50", data, tmp_path / "clean", skip_bad=True)
    assert_same_cache(cache_dir, tmp_path / "clean")
