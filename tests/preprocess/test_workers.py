"""The thread runner: every range once, results in the calling thread, errors stop the run."""

from __future__ import annotations

import subprocess
import sys
import threading

import cv2
import pytest

from preprocess.recipes import unreadable_reason
from preprocess.workers import run_ranges
from tests.preprocess.conftest import REPO_ROOT


def test_every_range_runs_once_and_results_arrive_in_the_calling_thread():
    seen_threads, results = set(), []

    def process(start, stop):
        seen_threads.add(threading.get_ident())
        return [(start, "odd")] if start % 2 else []

    def on_result(start, stop, bad):
        assert threading.current_thread() is threading.main_thread()
        results.append((start, stop, bad))

    threads_before = cv2.getNumThreads()
    tasks = [(i, i + 1) for i in range(50)]
    run_ranges(process, tasks, 3, on_result)
    assert sorted(r[:2] for r in results) == tasks
    assert all(bad == ([(s, "odd")] if s % 2 else []) for s, _, bad in results)
    assert threading.main_thread().ident not in seen_threads
    assert cv2.getNumThreads() == threads_before  # the caller's OpenCV setting is restored


def test_an_error_stops_the_run_without_starting_every_range():
    started = []

    def process(start, stop):
        started.append(start)
        if start == 3:
            raise RuntimeError("boom")
        return []

    with pytest.raises(RuntimeError, match="boom"):
        run_ranges(process, [(i, i + 1) for i in range(200)], 2, lambda *a: None)
    assert len(started) < 200


def test_unreadable_reasons(tmp_path):
    (tmp_path / "empty.JPEG").write_bytes(b"")
    (tmp_path / "dir.JPEG").mkdir()
    (tmp_path / "ok.JPEG").write_bytes(b"x")
    assert unreadable_reason(str(tmp_path / "missing.JPEG")) == "missing"
    assert unreadable_reason(str(tmp_path / "empty.JPEG")) == "empty file"
    assert unreadable_reason(str(tmp_path / "dir.JPEG")) == "not a regular file"
    assert unreadable_reason(str(tmp_path / "ok.JPEG")) is None


def test_preprocess_imports_neither_torch_nor_tensorflow():
    code = (
        "import sys, preprocess, preprocess.build, preprocess.cache, preprocess.__main__;"
        "heavy = {'torch', 'tensorflow'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
