"""The fast inference engine matches eager PyTorch; "auto" and fallbacks behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convert import build_model
from core.errors import UserError
from eval.engines import PreparedEngine, fast_builders, prepare_engine
from eval.engines import prepare as engines
from eval.engines.choice import AUTO_MIN_IMAGES, choose_engine
from eval.engines.fast_builders import compare_logits
from preprocess import normalize

BATCH = 2  # small: building a frozen ResNet-50 must stay cheap on a 2-core machine


def random_model(name: str, seed: int = 0) -> nn.Module:
    """Random weights with batch-norm statistics in a realistic range, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(name)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) * 0.5 + 0.75
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_mean.data = torch.randn(n, generator=generator) * 0.1
            module.running_var.data = torch.rand(n, generator=generator) * 0.5 + 0.75
    return model.eval()


def model_input(name: str, rows: int, seed: int = 1) -> torch.Tensor:
    """NCHW float32 in the range of the model's recipe (vgg: +-128, mobilenet: +-1)."""
    u8 = np.random.default_rng(seed).integers(0, 256, (rows, 224, 224, 3), dtype=np.uint8)
    return torch.from_numpy(normalize(u8, name)).permute(0, 3, 1, 2)


def eager_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x.contiguous())


# The default CPU fast path (oneDNN fuser) on both models, inductor on MobileNet (the default
# fast builder on CUDA), plain TorchScript on both. Each build is done once, by the module
# fixture, and counts toward its tests: ResNet-50's builds with a test take 4-7 s on 2
# cores and inductor's compile alone 7 s, so those are slow; MobileNet's others take 1-4 s.
FAST_CASES = [
    ("mobilenet_v1", "fast"),
    ("mobilenet_v1", "fast:torchscript-freeze"),
    pytest.param(("resnet50", "fast:torchscript-freeze"), marks=pytest.mark.slow),
    pytest.param(("resnet50", "fast"), marks=pytest.mark.slow),
    pytest.param(("mobilenet_v1", "fast:inductor"), marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=FAST_CASES, ids=lambda case: "-".join(case))
def fast_case(request):
    name, engine = request.param
    model = random_model(name)
    prepared = prepare_engine(model, engine, batch_size=BATCH)
    return name, model, prepared


def test_fast_engine_matches_eager_within_budget(fast_case):
    name, model, prepared = fast_case
    assert prepared.name.startswith("fast:"), prepared.notes
    assert prepared.setup_seconds > 0
    x = model_input(name, BATCH)
    expected = eager_logits(model, x)
    got = prepared(x)
    assert got.shape == (BATCH, 1001) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert torch.equal(got.topk(5, 1).indices, expected.topk(5, 1).indices)


def test_partial_and_oversized_batches_match_eager(fast_case):
    import torch._dynamo

    name, model, prepared = fast_case
    x = model_input(name, BATCH + 1, seed=2)  # one full chunk + a partial one
    expected = eager_logits(model, x)
    # A last partial batch must reuse the compiled graph, never trigger a recompile.
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        got = prepared(x)
        last = prepared(x[:1])  # a lone last image, padded to the built batch
    assert got.shape == (BATCH + 1, 1001)
    assert (got - expected).abs().max().item() <= 1e-4
    assert last.shape == (1, 1001)
    assert (last - expected[:1]).abs().max().item() <= 1e-4


def test_eager_engine_is_the_module_itself():
    model = random_model("mobilenet_v1")
    prepared = prepare_engine(model, "eager", batch_size=BATCH)
    assert prepared.name == "eager" and not prepared.is_fast
    x = model_input("mobilenet_v1", 3)
    assert torch.allclose(prepared(x), eager_logits(model, x), atol=1e-5, rtol=0)


def test_auto_picks_eager_for_small_runs_and_fast_for_large():
    assert choose_engine("auto", 50)[0] == "eager"
    assert choose_engine("auto", AUTO_MIN_IMAGES - 1)[0] == "eager"
    assert choose_engine("auto", AUTO_MIN_IMAGES)[0] == "fast"
    assert choose_engine("auto", None)[0] == "fast"
    assert choose_engine("eager", 10**6)[0] == "eager"
    assert choose_engine("fast", 1)[0] == "fast"
    assert choose_engine("fast:inductor", 1)[0] == "fast:inductor"
    with pytest.raises(UserError, match="^unknown engine 'turbo': expected one of auto, "):
        choose_engine("turbo", 10)
    with pytest.raises(UserError, match="fast:inductor"):
        choose_engine("fast:warp", 10)
    prepared = prepare_engine(random_model("mobilenet_v1"), "auto", num_images=50)
    assert prepared.name == "eager"
    assert any("auto" in note and "eager" in note for note in prepared.notes)


def test_build_failure_tries_the_next_fast_builder(monkeypatch):
    def broken(module, example):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setitem(fast_builders.FAST_BUILDERS, "broken", broken)
    monkeypatch.setitem(fast_builders.FAST_BUILDERS, "plain", lambda module, example: module)
    monkeypatch.setattr(engines, "FAST_BUILDER_ORDER", ("broken", "plain"))
    model = random_model("mobilenet_v1")
    prepared = prepare_engine(model, "fast", batch_size=BATCH)
    assert prepared.name == "fast:plain"
    assert any(
        "fast:broken failed to build" in n and "no C++ compiler" in n for n in prepared.notes
    )


def test_build_failure_falls_back_to_eager(monkeypatch):
    def broken(module, example):
        raise RuntimeError("no C++ compiler")

    order = fast_builders.FAST_BUILDER_ORDER
    for name in order:
        monkeypatch.setitem(fast_builders.FAST_BUILDERS, name, broken)
    model = random_model("mobilenet_v1")
    prepared = prepare_engine(model, "fast", batch_size=BATCH)
    assert prepared.name == "eager"
    assert sum("failed to build" in n for n in prepared.notes) == len(order)
    assert prepared.notes[-1] == "using eager"
    x = model_input("mobilenet_v1", 2)
    assert torch.allclose(prepared(x), eager_logits(model, x), atol=1e-5, rtol=0)


def test_disagreeing_fast_engine_falls_back_to_eager(monkeypatch):
    def drifting(module, example):
        return lambda x: module(x) + 1e-3  # beyond the 1e-4 budget

    monkeypatch.setitem(fast_builders.FAST_BUILDERS, "drifting", drifting)
    monkeypatch.setattr(engines, "FAST_BUILDER_ORDER", ("drifting",))
    prepared = prepare_engine(random_model("mobilenet_v1"), "fast", batch_size=2)
    assert prepared.name == "eager"
    assert any("disagrees with eager" in n and "exceeds" in n for n in prepared.notes)


def test_a_fast_engine_with_a_changed_top1_is_rejected():
    model = random_model("mobilenet_v1")
    x = model_input("mobilenet_v1", 2)

    def swapped(batch):  # same values, classes 0 and the winner swapped
        out = model(batch).clone()
        winner = out.argmax(1)
        rows = torch.arange(len(out))
        out[rows, 0], out[rows, winner] = out[rows, winner], out[rows, 0].clone()
        return out

    fake = PreparedEngine(
        name="fast:fake",
        setup_seconds=1.0,
        device=torch.device("cpu"),
        rows_per_call=2,
        channels_last=False,
        forward=swapped,
    )
    assert "exceeds" in fast_builders.check_against_eager(fake, model, x)
    # Even where the values were within budget, a changed winner is refused.
    with torch.inference_mode():
        problem = compare_logits(fake(x), model(x), atol=10.0)
    assert problem == "top-1 classes differ from eager"


def test_compare_logits_names_the_difference():
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    assert compare_logits(a, a.clone()) is None
    assert "exceeds" in compare_logits(a + 1e-3, a)
    big = a * 1000  # float32 rounding grows with the logits: the budget scales with them
    assert compare_logits(big + 0.2, big) is None
    assert "exceeds" in compare_logits(big + 1.0, big)
    assert compare_logits(a * float("nan"), a) is not None
    assert "shape" in compare_logits(a[:, :5], a)
