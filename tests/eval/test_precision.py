"""Device-independent logic of the GPU path, run on the CPU: precision, warm-up, "auto",
memory format, top-5 on the device and the fp32 agreement of a non-fp32 run."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import UserError
from core.profiles import get_profile
from eval.backends import Backend, TorchBackend
from eval.engines import build_times, fast_builders, prepare_engine
from eval.engines import choice as engine_choice
from eval.engines.choice import choose_engine, prefers_channels_last
from eval.engines.cpu_workers import WORKERS_ENV
from eval.engines.warmup import warmup_batch_sizes
from eval.evaluate import run_evaluation
from eval.options import check_precision
from tests.eval.fakes import FakeCache, ToyNet

RESNET = get_profile("resnet50")


def test_tf32_and_bf16_are_cuda_only():
    check_precision("fp32", "cpu")
    check_precision("bf16", "cuda")
    check_precision("tf32", "cuda:1")
    with pytest.raises(
        UserError, match="^--precision tf32 runs on CUDA only; on the cpu use fp32$"
    ):
        check_precision("tf32", "cpu")
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        check_precision("fp16", "cuda")


def test_non_fp32_precision_runs_eager():
    assert choose_engine("fast", 10**6, device_type="cuda", precision="bf16")[0] == "eager"
    assert choose_engine("auto", 10**6, device_type="cuda", precision="tf32")[0] == "eager"


def test_memory_format_follows_the_measurements():
    assert not prefers_channels_last("resnet50", "cuda", "fp32")  # NCHW measured faster
    assert prefers_channels_last("resnet50", "cuda", "bf16")
    assert prefers_channels_last("mobilenet_v1", "cuda", "fp32")
    assert prefers_channels_last("resnet50", "cpu", "fp32")


def test_auto_on_cuda_weighs_build_time_against_images(monkeypatch):
    monkeypatch.setattr(engine_choice, "recorded_build_seconds", lambda *a: None)
    # H100 rates: fast saves ~0.15 ms per ResNet-50 image, its 37 s cold build needs ~250k.
    assert choose_engine("auto", 50_000, device_type="cuda", model_name="resnet50")[0] == "eager"
    assert choose_engine("auto", 500_000, device_type="cuda", model_name="resnet50")[0] == "fast"
    # A warm compile cache (a recorded 2 s build) moves the break-even down.
    monkeypatch.setattr(engine_choice, "recorded_build_seconds", lambda *a: 2.0)
    assert choose_engine("auto", 50_000, device_type="cuda", model_name="resnet50")[0] == "fast"
    # The CPU rule is unchanged.
    assert choose_engine("auto", 50_000, device_type="cpu", model_name="resnet50")[0] == "fast"


def test_build_seconds_are_recorded_beside_the_compile_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(build_times, "_build_record_path", lambda: tmp_path / "builds.json")
    assert build_times.recorded_build_seconds("resnet50", "cuda", 256) is None
    build_times.record_build_seconds("resnet50", "cuda", 256, 12.345)
    assert build_times.recorded_build_seconds("resnet50", "cuda", 256) == 12.35
    assert build_times.recorded_build_seconds("resnet50", "cuda", 128) is None


def test_only_inductor_builds_are_recorded_as_a_warm_compile_cache(monkeypatch, tmp_path):
    """The record stands for inductor's on-disk cache: other builders leave none there."""
    monkeypatch.setattr(build_times, "_build_record_path", lambda: tmp_path / "builds.json")
    monkeypatch.setitem(fast_builders.FAST_BUILDERS, "inductor", lambda module, example: module)
    net = ToyNet(seed=2)
    freeze = prepare_engine(net, "fast:torchscript-freeze", batch_size=2, model_name="resnet50")
    assert freeze.name == "fast:torchscript-freeze"
    assert build_times.recorded_build_seconds("resnet50", "cpu", 2) is None
    inductor = prepare_engine(net, "fast:inductor", batch_size=2, model_name="resnet50")
    assert inductor.name == "fast:inductor"
    assert build_times.recorded_build_seconds("resnet50", "cpu", 2) is not None


def test_warmup_shapes_are_the_full_batch_and_the_tail():
    assert warmup_batch_sizes(50_000, 256) == [256, 80]
    assert warmup_batch_sizes(512, 256) == [256]
    assert warmup_batch_sizes(5, 32) == [5]
    assert warmup_batch_sizes(None, 32) == [32]


# Long enough that the timed part, which must not contain it, stays far below it even on a
# loaded machine.
FIRST_SHAPE_SECONDS = 1.0


class SlowFirstShape(torch.nn.Module):
    """Like cuDNN autotuning: the first call of each batch shape costs extra time."""

    def __init__(self):
        super().__init__()
        self.net = ToyNet(seed=1)
        self.seen: list[int] = []

    def forward(self, x):
        if x.shape[0] not in self.seen:
            self.seen.append(x.shape[0])
            time.sleep(FIRST_SHAPE_SECONDS)
        return self.net(x)


def test_warm_up_happens_in_setup_and_steady_state_excludes_it(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "1")  # whole batches on one thread, as on CUDA
    module = SlowFirstShape()
    backend = TorchBackend(module, RESNET, engine="eager", batch_size=4, num_images=10)
    assert backend.prepared.forward.seen == []  # no warm-up on the CPU by default
    prepared = prepare_engine(
        module, "eager", batch_size=4, num_images=10, warmup=True, copy_module=False
    )
    assert prepared.forward.seen == [4, 2]  # full batch and the 10 % 4 tail, during setup
    assert prepared.setup_seconds >= 2 * FIRST_SHAPE_SECONDS
    assert any(note.startswith("warm-up of batch shapes [4, 2]") for note in prepared.notes)
    backend.prepared = prepared
    outcome = run_evaluation(backend, FakeCache(n=10), batch_size=4, quiet=True)
    assert prepared.forward.seen == [4, 2]  # the timed pass met no new shape
    assert outcome.inference_seconds < FIRST_SHAPE_SECONDS  # so no first-shape cost in it


class TiedLogits(torch.nn.Module):
    """Every class ties except class 7: ranking must send ties to the lower class."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 1001)
        out[:, 7] = 1.0
        return out


def test_device_top5_ranks_like_the_numpy_rule():
    backend = TorchBackend(TiedLogits(), RESNET, engine="eager", batch_size=3)
    crops = FakeCache(n=3).read(0, 3)
    on_device = backend.collect([backend.submit(crops)])[0]
    by_numpy = Backend.submit(backend, crops)
    assert np.array_equal(on_device, by_numpy)
    assert on_device[0].tolist() == [6, -1, 0, 1, 2]  # class 7, then 0, 1, 2, 3 (offset 1)


def test_grouped_collect_keeps_batch_order():
    backend = TorchBackend(ToyNet(seed=4), RESNET, engine="eager", batch_size=2)
    cache = FakeCache(n=7)
    backend.collect_every = 3
    grouped = run_evaluation(backend, cache, batch_size=2, quiet=True)
    backend.collect_every = 1
    single = run_evaluation(backend, cache, batch_size=2, quiet=True)
    assert np.array_equal(grouped.top5, single.top5)
    assert grouped.counter == single.counter


def test_cudnn_autotune_only_for_runs_that_repay_it(monkeypatch):
    monkeypatch.delenv("MLPERF_PORT_CUDNN_AUTOTUNE", raising=False)
    assert engine_choice.cudnn_autotune(50_000)[0] is False
    assert engine_choice.cudnn_autotune(engine_choice.CUDNN_AUTOTUNE_MIN_IMAGES)[0] is True
    assert engine_choice.cudnn_autotune(None)[0] is True
    monkeypatch.setenv("MLPERF_PORT_CUDNN_AUTOTUNE", "1")
    assert engine_choice.cudnn_autotune(10) == (True, "cuDNN autotune on (environment)")


def test_nchw_engine_gets_nchw_input_from_the_nhwc_cache():
    net = ToyNet(seed=2)
    prepared = prepare_engine(net, "eager", channels_last=False, copy_module=False)
    nhwc_view = torch.rand(2, 224, 224, 3).permute(0, 3, 1, 2)  # how the cache arrives
    prepared(nhwc_view)
    assert net.last_input.is_contiguous()  # NCHW as chosen, not the cache's layout


def test_several_reader_threads_keep_the_order():
    backend = TorchBackend(ToyNet(seed=4), RESNET, engine="eager", batch_size=2)
    cache = FakeCache(n=11)
    one = run_evaluation(backend, cache, batch_size=2, quiet=True)
    backend.reader_threads = 4
    four = run_evaluation(backend, cache, batch_size=2, quiet=True)
    assert np.array_equal(one.top5, four.top5) and one.counter == four.counter


def test_folding_same_pads_keeps_the_logits():
    import copy

    from convert import build_model
    from convert.models.pad_folding import fold_same_padding
    from convert.models.padding import TFSamePad2d

    torch.manual_seed(0)
    model = build_model("mobilenet_v1").eval()
    folded = copy.deepcopy(model)
    x = torch.randn(2, 3, 224, 224)
    # 27 pads: the stem's, 13 depthwise 3x3 ones and 13 pointwise 1x1 no-ops. The 4
    # stride-2 depthwise ones (TF pads 0 before, 1 after) fold into 4x4 kernels whose first
    # row and column are zero; only the dense stem keeps its explicit pad.
    assert fold_same_padding(folded, x) == 27 - 1
    left = [m for m in folded.modules() if isinstance(m, TFSamePad2d)]
    assert len(left) == 1 and left[0] is folded.features[0].pad
    grown = [m for m in folded.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (4, 4)]
    assert len(grown) == 4 and all(m.stride == (2, 2) and m.padding == (1, 1) for m in grown)
    assert all(not m.weight[:, :, 0].any() and not m.weight[:, :, :, 0].any() for m in grown)
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=0)
