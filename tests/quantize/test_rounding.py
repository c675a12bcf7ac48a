"""GPTQ rounding: codes on the grid, less output error than nearest rounding, grouped
problems, dead inputs, which layers it rounds, and its record through quantize_model."""

from __future__ import annotations

import pytest
import torch

from fixtures import photo_models as models
from quantize import quantize_model
from quantize.rounding import BLOCK, DAMPING, LEARNED_BITS, gptq, learned_layers

pytestmark = pytest.mark.usefixtures("one_thread")

QMAX = 7  # 4-bit weights


def _problem(groups: int, rows: int, width: int, seed: int, samples: int = 256):
    """Weights [G, R, K], a Hessian X Xᵀ of correlated inputs [G, K, K] and per-row scales
    [G, R] (max |w| over QMAX), float64."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(groups, rows, width, generator=generator, dtype=torch.float64)
    mixing = torch.randn(groups, width, width, generator=generator, dtype=torch.float64)
    mixing += 3.0 * torch.eye(width, dtype=torch.float64)  # correlated, still full rank
    sources = torch.randn(groups, width, samples, generator=generator, dtype=torch.float64)
    inputs = mixing @ sources
    hessian = inputs @ inputs.transpose(1, 2)
    scale = weights.abs().amax(dim=2) / QMAX
    return weights, hessian, scale


def _nearest(weights, scale):
    return torch.round(weights / scale[..., None]).clamp(-QMAX, QMAX) * scale[..., None]


def _error(delta, hessian) -> float:
    """trace((W - Q) H (W - Q)ᵀ) summed over the groups."""
    return float(sum(torch.trace(d @ h @ d.T) for d, h in zip(delta, hessian, strict=True)))


def _assert_on_grid(quantized, scale):
    codes = quantized / scale[..., None]
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes, torch.round(codes), atol=1e-9)
    assert codes.abs().max() <= QMAX + 1e-9


def _reference_gptq(rows, hessian, scale):
    """One group, unblocked and unbatched: the textbook loop over columns in descending
    Hessian diagonal, each one's error spread by the upper Cholesky factor of H⁻¹."""
    order = torch.argsort(torch.diagonal(hessian), descending=True)
    w = rows[:, order].clone()
    h = hessian[order][:, order].clone()
    h += DAMPING * torch.diagonal(h).mean() * torch.eye(len(h), dtype=h.dtype)
    upper = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    s = scale[:, None]
    quantized = torch.empty_like(w)
    for i in range(w.shape[1]):
        q = torch.round(w[:, i : i + 1] / s).clamp(-QMAX, QMAX) * s
        quantized[:, i : i + 1] = q
        error = (w[:, i : i + 1] - q) / upper[i, i]
        w[:, i:] -= error * upper[i : i + 1, i:]
    out = torch.empty_like(quantized)
    out[:, order] = quantized
    return out


def test_gptq_codes_on_the_grid_and_less_output_error_than_nearest():
    weights, hessian, scale = _problem(groups=1, rows=16, width=64, seed=0)
    learned = gptq(weights, hessian, scale, QMAX)
    assert learned.shape == weights.shape and learned.dtype == torch.float64
    _assert_on_grid(learned, scale)
    nearest = _nearest(weights, scale)
    assert not torch.equal(learned, nearest)
    assert _error(weights - learned, hessian) < 0.9 * _error(weights - nearest, hessian)


def test_gptq_matches_the_unblocked_loop_across_blocks():
    width = BLOCK + 72  # two blocks: the lazy update of the later columns is exercised
    weights, hessian, scale = _problem(groups=1, rows=8, width=width, seed=1, samples=512)
    learned = gptq(weights, hessian, scale, QMAX)
    reference = _reference_gptq(weights[0], hessian[0], scale[0])
    assert torch.allclose(learned[0], reference, atol=1e-9)
    nearest = _nearest(weights, scale)
    assert _error(weights - learned, hessian) < _error(weights - nearest, hessian)


def test_grouped_batch_equals_each_group_alone():
    # depthwise-like: one small problem per channel (9 taps, one output row each)
    weights, hessian, scale = _problem(groups=6, rows=1, width=9, seed=2, samples=64)
    together = gptq(weights, hessian, scale, QMAX)
    for g in range(6):
        alone = gptq(weights[g : g + 1], hessian[g : g + 1], scale[g : g + 1], QMAX)
        assert torch.allclose(together[g : g + 1], alone, atol=1e-12), g
    _assert_on_grid(together, scale)
    assert _error(weights - together, hessian) < _error(weights - _nearest(weights, scale), hessian)


def test_dead_inputs_take_zero_weights_and_no_nan():
    weights, hessian, scale = _problem(groups=2, rows=4, width=12, seed=3)
    dead = [0, 5, 11]
    hessian[0, dead, :] = 0.0  # inputs 0, 5 and 11 of group 0 are always zero
    hessian[0, :, dead] = 0.0
    hessian[1] = 0.0  # group 1 never sees any input
    learned = gptq(weights, hessian, scale, QMAX)
    _assert_on_grid(learned, scale)
    assert torch.equal(learned[0][:, dead], torch.zeros(4, 3, dtype=torch.float64))
    assert torch.equal(learned[1], torch.zeros_like(learned[1]))
    alive = [i for i in range(12) if i not in dead]
    live = gptq(
        weights[:1, :, alive], hessian[:1][:, alive][:, :, alive].contiguous(), scale[:1], QMAX
    )
    assert torch.allclose(learned[0][:, alive], live[0], atol=1e-9)


def test_learned_layers():
    # (weight bits, bits of the activation read): "auto" takes a layer where either is low
    bits = {
        "features.0": (8, 8),
        "features.1.depthwise": (LEARNED_BITS, 8),
        "features.1.pointwise": (LEARNED_BITS + 1, 8),
        "features.2.depthwise": (8, 4),
        "classifier": (2, 8),
    }
    assert learned_layers("nearest", bits) == []
    assert learned_layers("gptq", bits) == list(bits)
    auto = ["features.1.depthwise", "features.2.depthwise", "classifier"]
    assert learned_layers("auto", bits) == auto


# -- through quantize_model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def calibration():
    return models.crops(4, 101, "mobilenet")


@pytest.fixture(scope="module")
def w4a8_pair(mobilenet, calibration):
    kwargs = {"bias_correction": False, "quiet": True}
    learned = quantize_model(mobilenet, [calibration], "w4a8", **kwargs)
    nearest = quantize_model(mobilenet, [calibration], "w4a8", rounding="nearest", **kwargs)
    return learned, nearest


@pytest.mark.slow
def test_gptq_round_record_at_w4a8(w4a8_pair):
    learned, _ = w4a8_pair
    record = learned.quantization_record
    assert record["rounding"] == "auto"
    assert "learned rounding (GPTQ)" in record["techniques"]
    rounding = record["learned_rounding"]
    assert rounding["method"].startswith("GPTQ")
    layers = [name for name, _ in learned.layers()]
    assert rounding["layers"] == layers and rounding["images"] == 4
    ratios = rounding["output_error_ratio"]
    assert list(ratios) == layers
    assert all(0.0 <= ratio < 2.0 for ratio in ratios.values()), ratios
    assert sum(ratios.values()) / len(ratios) < 1.0, ratios


@pytest.mark.slow
def test_gptq_round_never_keeps_more_error_than_nearest(w4a8_pair):
    """Each layer keeps the candidate closest to fp32's output (nearest, GPTQ, GPTQ on the
    refitted weights): never worse than nearest, and better on most layers."""
    ratios = w4a8_pair[0].quantization_record["learned_rounding"]["output_error_ratio"]
    worse = {name: ratio for name, ratio in ratios.items() if ratio > 1.0}
    assert not worse, worse
    assert sum(ratio < 1.0 for ratio in ratios.values()) > len(ratios) / 2, ratios


def _on_own_grid(layer) -> bool:
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    return torch.allclose(layer.weight_q, layer.weight_codes() * layer.weight_scale.view(shape))


@pytest.mark.slow
def test_nearest_rounding_records_none_and_keeps_nearest_codes(w4a8_pair):
    learned, nearest = w4a8_pair
    record = nearest.quantization_record
    ratios = learned.quantization_record["learned_rounding"]["output_error_ratio"]
    assert record["rounding"] == "nearest" and "learned_rounding" not in record
    assert "learned rounding (GPTQ)" not in record["techniques"]
    for (name, near), (_, gptq_layer) in zip(nearest.layers(), learned.layers(), strict=True):
        shape = (-1,) + (1,) * (near.weight.dim() - 1)
        codes = torch.round(near.weight / near.weight_scale.view(shape)).clamp(-QMAX, QMAX)
        assert torch.equal(near.weight_codes(), codes), name
        assert _on_own_grid(near) and _on_own_grid(gptq_layer), name
        assert gptq_layer.weight_codes().abs().max() <= QMAX, name
        if ratios[name] < 1.0:  # learned rounding was kept for this layer
            assert not torch.equal(near.weight_q, gptq_layer.weight_q), name
