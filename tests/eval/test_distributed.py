"""torchrun: shards cover the cache exactly; 2 real CPU ranks equal one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval as eval_stage
from benchmarks.seeded_weights import save_converted, seeded_model
from core.errors import UserError
from eval.distributed import (
    CacheShard,
    DistContext,
    device_for_rank,
    gather_predictions,
    join_shards,
    peer_stopped,
    shard_bounds,
)
from eval.metrics import AccuracyCounter
from fixtures.images import write_val_set
from preprocess import build_cache
from tests.eval.fakes import FakeCache

N_IMAGES = 7  # 2 ranks: shards of 4 and 3


@pytest.mark.parametrize("count", [0, 1, 2, 7, 10, 50_000, 50_001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_are_contiguous_and_cover_every_image_once(count, world):
    bounds = [shard_bounds(count, rank, world) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    for (_, stop), (start, _) in zip(bounds, bounds[1:], strict=False):
        assert stop == start  # no gap, no overlap
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == count


def test_shard_bounds_refuses_a_rank_outside_the_group():
    with pytest.raises(ValueError, match="outside a group of 2"):
        shard_bounds(10, 2, 2)


def test_cache_shard_reads_its_own_images():
    cache = FakeCache(n=9)
    shard = CacheShard(cache, 4, 9)
    assert len(shard) == 5
    assert np.array_equal(shard.read(1, 3), cache.images[5:7])
    assert np.array_equal(shard.labels, cache.labels[4:9])


def test_join_shards_refuses_a_missing_image():
    with pytest.raises(RuntimeError, match="returned 3 predictions for 4 images"):
        join_shards([np.zeros((2, 5)), np.zeros((1, 5))], 4)


def gather_two_ranks(monkeypatch, rank1_inputs: dict) -> tuple[dict | None, np.ndarray]:
    """Rank 0's gather_predictions, rank 1 having sent ``rank1_inputs`` with two images;
    and the labels of the four."""
    cache = FakeCache(n=4)
    seconds = {"inference_seconds": 2.0, "wall_seconds": 3.0}

    def gather_object(mine, gathered, dst):
        gathered[0] = mine
        gathered[1] = (np.tile(cache.labels[2:4, None], (1, 5)), seconds, rank1_inputs)

    monkeypatch.setattr(torch.distributed, "gather_object", gather_object)
    top5 = np.tile(cache.labels[:2, None], (1, 5))
    mine = {"inference_seconds": 1.0, "wall_seconds": 4.0}
    inputs = {"source": {"weights_sha256": "a"}, "cache": "c"}
    return gather_predictions(top5, mine, inputs, 4, DistContext(0, 2)), cache.labels


def test_rank_zero_scores_every_rank_that_loaded_the_same_files(monkeypatch):
    gathered, labels = gather_two_ranks(
        monkeypatch, {"source": {"weights_sha256": "a"}, "cache": "c"}
    )
    counter = AccuracyCounter()  # as eval.evaluate scores what rank 0 gathered
    counter.update(gathered["top5"], np.asarray(labels[:4], dtype=np.int64))
    assert counter.images == 4 and counter.correct_top1 == 4
    assert (gathered["inference_seconds"], gathered["wall_seconds"]) == (2.0, 4.0)


def test_ranks_that_loaded_different_weights_are_refused(monkeypatch):
    """Rank 0 records only its own digest: a file replaced as the ranks started is refused."""
    with pytest.raises(UserError, match="ranks loaded different model or cache files"):
        gather_two_ranks(monkeypatch, {"source": {"weights_sha256": "b"}, "cache": "c"})


def test_a_collective_broken_by_another_rank_is_one_sentence():
    gloo = "[/src/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1\nmore"
    with pytest.raises(UserError) as raised, peer_stopped(rank=1):
        raise RuntimeError(gloo)
    assert str(raised.value) == (
        "rank 1 stopped: another rank stopped first, and its error says why "
        "(Connection closed by peer [127.0.0.1]:1)"
    )


def test_cuda_means_the_local_gpu_under_torchrun():
    ctx = DistContext(rank=3, world_size=4, local_rank=1)
    assert device_for_rank("cuda", ctx) == "cuda:1"
    assert device_for_rank("cuda:0", ctx) == "cuda:0"  # an explicit index is kept
    assert device_for_rank("cuda", DistContext()) == "cuda"


@pytest.fixture(scope="module")
def mobilenet_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_val_set(root / "data", N_IMAGES, layout="val_map", seed=11)
    build_cache("mobilenet_v1", root / "data", root / "cache", workers=1, quiet=True)
    weights = save_converted(seeded_model("mobilenet_v1", seed=2), "mobilenet_v1", root / "w.pth")
    return root, weights


def run_module(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.slow
def test_two_torchrun_ranks_equal_one_process(mobilenet_run):
    root, weights = mobilenet_run
    common = ["--model", "mobilenet_v1", "--cache-dir", str(root / "cache"), "--weights",
              str(weights), "--engine", "eager", "--batch-size", "2", "--quiet"]  # fmt: skip
    single = eval_stage.evaluate(
        "mobilenet_v1", root / "cache", weights=weights, engine="eager", batch_size=2,
        out_dir=root / "single", quiet=True,
    )  # fmt: skip
    proc = run_module(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "eval", *common, "--out", str(root / "two")]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((root / "two" / "results.json").read_text())
    assert results["world_size"] == 2 and single.world_size == 1
    assert results["images"] == N_IMAGES == single.images
    for name in ("predictions.npy", "top5.npy"):
        assert np.array_equal(np.load(root / "two" / name), np.load(root / "single" / name))
    assert results["correct_top1"] == single.correct_top1
    assert results["correct_top5"] == single.correct_top5
    # Rank 0 alone wrote: the outputs, its lock, and nothing else.
    written = sorted(p.name for p in (root / "two").iterdir())
    assert written == [".lock", "predictions.npy", "results.json", "top5.npy"]
    assert proc.stdout.count("backend ") == 1  # one table, from rank 0


def test_precision_other_than_fp32_is_refused_on_the_cpu(mobilenet_run, tmp_path):
    root, weights = mobilenet_run
    proc = run_module(
        ["-m", "eval", "--model", "mobilenet_v1", "--cache-dir", str(root / "cache"),
         "--weights", str(weights), "--precision", "bf16", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --precision bf16 runs on CUDA only; on the cpu use fp32"
    assert not (tmp_path / "o").exists()


def test_results_record_the_precision(mobilenet_run, tmp_path):
    root, weights = mobilenet_run
    eval_stage.evaluate(
        "mobilenet_v1", root / "cache", weights=weights, engine="eager", batch_size=2,
        out_dir=tmp_path, quiet=True,
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["precision"] == "fp32"
    assert any("fp32, channels-last" in note for note in results["engine_notes"])
    assert torch.get_num_threads() >= 1


def test_world_size_without_torchrun_is_one_sentence(mobilenet_run, tmp_path):
    root, weights = mobilenet_run
    proc = run_module(
        ["-m", "eval", "--model", "mobilenet_v1", "--cache-dir", str(root / "cache"),
         "--weights", str(weights), "--out", str(tmp_path / "o")],
        {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""},
    )  # fmt: skip
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert err.startswith("error: WORLD_SIZE=2 but this process cannot join a gloo group")
    assert err.endswith("start it with torchrun --nproc-per-node N -m eval ...")
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


NO_GPU = (
    f"--device cuda was requested but this PyTorch ({torch.__version__}) sees no CUDA GPU; "
    f"use --device cpu (torchrun ranks then share the CPU)"
)


def torchrun_environment(monkeypatch, local_rank: int = 0) -> None:
    for name, value in dict(WORLD_SIZE="2", RANK=str(local_rank), LOCAL_RANK=str(local_rank),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():  # fmt: skip
        monkeypatch.setenv(name, value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a PyTorch that sees no GPU")
def test_cuda_without_a_gpu_under_torchrun_is_one_sentence(monkeypatch):
    from eval.distributed import init_from_environment

    torchrun_environment(monkeypatch)
    with pytest.raises(UserError) as refused:
        init_from_environment("cuda")
    assert str(refused.value) == NO_GPU


def test_a_local_rank_without_its_own_gpu_is_one_sentence(monkeypatch):
    from eval.distributed import init_from_environment

    torchrun_environment(monkeypatch, local_rank=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError) as refused:
        init_from_environment("cuda", "pipeline.run")
    assert str(refused.value) == (
        "LOCAL_RANK=1 but this machine has 1 CUDA device(s): start at most 1 processes per "
        "machine (torchrun --nproc-per-node 1)"
    )


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a PyTorch that sees no GPU")
def test_torchrun_with_cuda_on_a_cpu_build_says_so_on_every_rank(mobilenet_run, tmp_path):
    root, weights = mobilenet_run
    proc = run_module(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "eval", "--model", "mobilenet_v1", "--cache-dir", str(root / "cache"),
         "--weights", str(weights), "--device", "cuda", "--quiet", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.count(f"error: {NO_GPU}") == 2, proc.stderr[-3000:]
    assert "_cuda_setDevice" not in proc.stderr and "AttributeError" not in proc.stderr
    assert not (tmp_path / "o" / "results.json").exists()
