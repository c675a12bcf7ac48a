"""CPU engines split batches over single-threaded per-core workers, in order, exactly."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from core.errors import UserError
from eval.engines import cpu_workers, fast_builders, prepare_engine
from eval.engines.cpu_workers import WORKERS_ENV, chunk_images, worker_count


class RecordingModel(nn.Module):
    """Row-wise logits (row i -> its input mean), recording each call's thread state."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls.append((threading.current_thread().name, torch.get_num_threads(), len(x)))
        return x.mean(dim=(1, 2, 3)).unsqueeze(1).repeat(1, 1001)


def test_worker_count_and_chunks(monkeypatch):
    monkeypatch.setattr(cpu_workers, "available_cores", lambda: 8)
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert worker_count(32) == 8 and worker_count(3) == 3 and worker_count(1) == 1
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert worker_count(32) == 1
    monkeypatch.setenv(WORKERS_ENV, "")  # set but empty: as if unset
    assert worker_count(32) == 8
    monkeypatch.delenv(WORKERS_ENV)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks on this machine
    assert worker_count(32) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert worker_count(32) == 1
    # Every worker gets work from a full batch; chunks never exceed CHUNK_IMAGES.
    assert chunk_images(32, 8) == cpu_workers.CHUNK_IMAGES
    assert chunk_images(32, 32) == 1 and chunk_images(5, 2) == min(3, cpu_workers.CHUNK_IMAGES)


def test_batches_run_on_single_threaded_workers_in_order(monkeypatch):
    monkeypatch.setattr(cpu_workers, "available_cores", lambda: 2)
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    model = RecordingModel()
    prepared = prepare_engine(model, "eager", batch_size=10, copy_module=False)
    assert prepared.workers is not None and prepared.workers.workers == 2
    x = torch.arange(11, dtype=torch.float32).reshape(11, 1, 1, 1).expand(11, 3, 4, 4)
    logits = prepared(x)
    # Row order survives the split: row i's logits are its own input's mean, i.
    assert torch.equal(logits[:, 0], torch.arange(11, dtype=torch.float32))
    assert {name.startswith("core-worker") for name, _, _ in model.calls} == {True}
    assert {threads for _, threads, _ in model.calls} == {1}
    assert sorted(rows for _, _, rows in model.calls) == [3, 4, 4]  # 4-image chunks


def test_each_worker_transforms_its_own_chunk(monkeypatch):
    """A uint8 batch with a transform gives the logits of the batch transformed first,
    bit for bit, and the transform runs on the workers, chunk by chunk."""
    monkeypatch.setattr(cpu_workers, "available_cores", lambda: 2)
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    model = RecordingModel()
    prepared = prepare_engine(model, "eager", batch_size=10, copy_module=False)
    seen: list[tuple[str, int]] = []

    def normalize(u8: torch.Tensor) -> torch.Tensor:
        seen.append((threading.current_thread().name, len(u8)))
        return (u8.to(torch.float32) / 255.0 - 0.5) * 2.0

    u8 = torch.randint(0, 256, (11, 3, 4, 4), dtype=torch.uint8)
    expected = prepared(normalize(u8))
    seen.clear()
    assert torch.equal(prepared(u8, transform=normalize), expected)
    assert sorted(rows for _, rows in seen) == [3, 4, 4]
    assert all(name.startswith("core-worker") for name, _ in seen)


def test_one_worker_means_whole_batches_on_intra_op_threads(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "1")
    model = RecordingModel()
    prepared = prepare_engine(model, "eager", batch_size=10, copy_module=False)
    assert prepared.workers is None and prepared.rows_per_call == 10
    prepared(torch.zeros(10, 3, 4, 4))
    assert model.calls == [(threading.current_thread().name, torch.get_num_threads(), 10)]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_fast_engine_logits_do_not_depend_on_the_split(monkeypatch, workers):
    """A real fast engine (pads folded, frozen) through workers equals eager per image."""
    from convert import build_model

    monkeypatch.setenv(WORKERS_ENV, workers)
    torch.manual_seed(0)
    model = build_model("mobilenet_v1").eval()
    prepared = prepare_engine(model, "fast:torchscript-freeze", batch_size=6)
    assert prepared.is_fast, prepared.notes
    x = torch.rand(7, 3, 224, 224) * 2 - 1  # one full batch and a lone tail image
    with torch.inference_mode():
        expected = model(x)
    got = prepared(x)
    assert fast_builders.compare_logits(got, expected) is None


def test_onednn_fusion_switch_stays_on_until_the_last_call_ends():
    switch = fast_builders._ProcessSwitch()
    before = torch.jit.onednn_fusion_enabled()
    inside: list[bool] = []
    release = threading.Event()

    def slow_call():
        inside.append(torch.jit.onednn_fusion_enabled())
        release.wait(5)
        return torch.zeros(1)

    thread = threading.Thread(target=switch.run, args=(slow_call,))
    thread.start()
    while not inside:
        pass
    switch.run(lambda: torch.zeros(1))  # a second, shorter call ends first
    assert torch.jit.onednn_fusion_enabled()  # still on for the slow one
    release.set()
    thread.join()
    assert inside == [True] and torch.jit.onednn_fusion_enabled() == before


@pytest.mark.parametrize("value", ["0", "abc", "-3", "2.5", "٣"])
def test_a_worker_count_that_is_not_one_or_more_is_one_sentence(monkeypatch, value):
    monkeypatch.setenv(WORKERS_ENV, value)
    with pytest.raises(UserError) as refused:
        worker_count(32)
    assert str(refused.value) == (
        f"the environment variable MLPERF_PORT_CPU_WORKERS={value!r} is not a whole number "
        f"of workers: set it to 1 or more (1 shares each layer between intra-op threads), "
        f"or unset it for one worker per core"
    )


def test_eval_refuses_a_bad_worker_count_in_one_sentence(tmp_path):
    """The real process: no traceback, no results written."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.seeded_weights import save_converted, seeded_model
    from fixtures.images import write_val_set
    from preprocess import build_cache

    write_val_set(tmp_path / "data", 2, layout="val_map", seed=3)
    build_cache("mobilenet_v1", tmp_path / "data", tmp_path / "cache", workers=1, quiet=True)
    weights = save_converted(seeded_model("mobilenet_v1"), "mobilenet_v1", tmp_path / "w.pth")
    done = subprocess.run(
        [sys.executable, "-m", "eval", "--model", "mobilenet_v1", "--cache-dir",
         str(tmp_path / "cache"), "--weights", str(weights), "--out", str(tmp_path / "out"),
         "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, WORKERS_ENV: "2.5"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the environment variable MLPERF_PORT_CPU_WORKERS='2.5' is not a whole number "
        "of workers: set it to 1 or more (1 shares each layer between intra-op threads), "
        "or unset it for one worker per core"
    ]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()
