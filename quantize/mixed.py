"""A mixed-precision plan: which layers to raise to 8 bits, chosen on the calibration images.

Under MLPerf's gate, the plan raises the fewest parameters needed for the quantized
network to keep fp32's top-1 on at least the gate's share of the calibration images; within
a bit budget, it keeps the most answers at a mean of at most B weight bits.

1. The network is calibrated at the asked widths, and each layer alone at those widths is
   measured (``sensitivity.layer_costs``); layers are ranked by the logit noise they add
   per parameter (the cheap, damaging ones first: MobileNet's depthwise convolutions and
   its first convolution).
2. Within a budget: the ranking is taken in order, each layer raised if the mean weight
   bits stay within the budget (greedy knapsack), and that plan is calibrated.
3. Under the gate: the shortest prefix of the ranking whose calibrated network reaches the
   gate, found by bisection (a handful of calibrations: learned rounding makes each layer
   compensate the ones before it, so plans are calibrated whole, never pieced together).

MLPerf forbids tuning on the evaluation images, so only the calibration images are used,
split in two: plans are calibrated on three quarters of them and judged on the last
quarter (learned rounding fits the images it calibrates on, so its agreement there is
optimistic, and more so the more low-bit layers a plan keeps). That held-back agreement is
the plan's prediction; the chosen plan is then calibrated on every calibration image, as
``--layer-bits`` would calibrate it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .layer_bits import bits_names, explicit_layers, weight_bits_mean
from .sensitivity import LayerCost, layer_costs, logit_agreement, logits_of
from .simulated import SimNet, set_quantized
from .wiring import Widths

HIGH = (8, 8)  # what a raised layer runs at


@dataclass(frozen=True)
class Goal:
    """Reach ``target`` agreement with the fewest raised parameters, or (``budget`` set)
    the best agreement at a mean of at most ``budget`` weight bits."""

    target: float
    budget: float | None = None


# calibrate(spec, batches) -> (calibrated SimNet, its Widths, ...), spec a --layer-bits map
Calibrate = Callable[[dict[str, str] | None, list[torch.Tensor]], tuple]
CHECK_EVERY = 4  # every 4th calibration image judges the plans, the rest calibrates them
MIN_CHECK_IMAGES = 4  # with fewer held back, plans are judged on the images they fit


def plan_mixed_precision(
    calibrate: Calibrate, batches: list[torch.Tensor], spec: dict | None, goal: Goal, quiet: bool
) -> tuple[tuple, dict]:
    """The planned calibration (what ``calibrate`` returned for the plan, on every batch)
    and the plan's record."""
    fit, check = split_images(batches)
    low = calibrate(spec, fit)
    low_net, low_widths = low[0], low[1]
    reference = _fp32_logits(low_net, check)
    costs = layer_costs(low_net, check, low_widths.layers, quiet)
    ranking = _ranking(costs, low_widths)
    search = _Search(calibrate, fit, check, reference, _explicit_spec(spec, low_widths))
    search.tried[0] = search.point(0, [], low)
    if goal.budget is not None:
        raised = _within_budget(ranking, low_widths, goal.budget)
        best = search.calibrated(len(raised), raised)
    else:
        best = _bisect(search, ranking, goal.target, quiet)
    final = calibrate(search.spec(best["layers"]), batches)
    record = _record(goal, costs, ranking, search, best, final[1])
    record["images"] = _images_note(fit, check)
    return final, record


def split_images(batches: list[torch.Tensor]) -> tuple[list, list]:
    """``(fit, check)``: every CHECK_EVERY-th image held back to judge plans; both the whole
    set when that would hold back fewer than MIN_CHECK_IMAGES."""
    images = torch.cat(batches)
    held = torch.arange(len(images)) % CHECK_EVERY == CHECK_EVERY - 1
    if int(held.sum()) < MIN_CHECK_IMAGES:
        return batches, batches
    return [images[~held]], [images[held]]


def _images_note(fit: list, check: list) -> str:
    if fit is check:
        return (f"too few calibration images to hold some back: plans judged on the "
                f"{sum(len(b) for b in fit)} they calibrate on (optimistic)")  # fmt: skip
    return (f"calibration images only (MLPerf forbids tuning on the evaluated ones): plans "
            f"calibrated on {len(fit[0])} and judged on the other {len(check[0])}; the plan "
            "kept then calibrated on all of them")  # fmt: skip


class _Search:
    """Plans calibrated so far (on the fit images), by how many layers they raise, each
    judged on the check images."""

    def __init__(self, calibrate: Calibrate, fit, check, reference, base: dict[str, str]):
        self.calibrate, self.fit, self.check, self.reference = calibrate, fit, check, reference
        self.base = base
        self.tried: dict[int, dict] = {}

    def spec(self, raised: list[str]) -> dict[str, str]:
        return {**self.base, **{name: "w8a8" for name in raised}}

    def calibrated(self, count: int, raised: list[str]) -> dict:
        if count not in self.tried:
            calibrated = self.calibrate(self.spec(raised), self.fit)
            self.tried[count] = self.point(count, raised, calibrated)
        return self.tried[count]

    def point(self, count: int, raised: list[str], calibrated: tuple) -> dict:
        sqnr, kept = logit_agreement(logits_of(calibrated[0], self.check), self.reference)
        mean = calibrated[1].weight_bits_mean
        return {"raised": count, "layers": raised, "agreement": kept, "logits_sqnr_db": sqnr,
                "weight_bits_mean": mean}  # fmt: skip


def _within_budget(ranking: list[str], widths: Widths, budget: float) -> list[str]:
    """The ranked layers raised in order while the mean weight bits stay within ``budget``
    (a layer that would pass it is skipped, a smaller one after it may still fit)."""
    bits = dict(widths.layers)
    raised = []
    for name in ranking:
        trial = {**bits, name: HIGH}
        if weight_bits_mean(trial, widths.parameters) <= budget + 1e-9:
            bits, raised = trial, [*raised, name]
    return raised


def _bisect(search: _Search, ranking: list[str], target: float, quiet: bool) -> dict:
    """The shortest prefix of ``ranking`` whose calibration reaches ``target`` (agreement
    assumed to grow with the prefix), or the best one tried when none does."""
    if search.tried[0]["agreement"] >= target:
        return search.tried[0]
    low, high = 0, len(ranking)
    top = search.calibrated(high, ranking)
    if top["agreement"] >= target:
        with tqdm(desc="mixed precision (bisection)", unit="plan", disable=quiet) as bar:
            while high - low > 1:
                middle = (low + high) // 2
                if search.calibrated(middle, ranking[:middle])["agreement"] >= target:
                    high = middle
                else:
                    low = middle
                bar.update(1)
        return search.tried[high]
    return max(search.tried.values(), key=lambda p: (p["agreement"], p["logits_sqnr_db"]))


def _explicit_spec(spec: dict | None, widths: Widths) -> dict[str, str]:
    """The user's ``--layer-bits`` map with its aliases resolved to layer names, so raised
    layers can be added to it by name."""
    named = explicit_layers(spec, list(widths.layers))
    return {name: bits for name, bits in bits_names(widths.layers).items() if name in named}


def _fp32_logits(net: SimNet, batches) -> torch.Tensor:
    set_quantized(net, False)
    try:
        return logits_of(net, batches)
    finally:
        set_quantized(net, True)


def _ranking(costs: list[LayerCost], widths: Widths) -> list[str]:
    """The layers that can be raised, most logit noise per parameter first."""
    raisable = [c for c in costs if widths.layers[c.layer] != HIGH]
    return [c.layer for c in sorted(raisable, key=_noise_per_parameter, reverse=True)]


def _noise_per_parameter(cost: LayerCost) -> float:
    noise = 0.0 if cost.logits_sqnr_db == float("inf") else 10 ** (-cost.logits_sqnr_db / 10)
    return noise / cost.parameters


def _record(goal: Goal, costs, ranking, search: _Search, best: dict, widths: Widths) -> dict:
    return {
        "goal": "bit budget" if goal.budget is not None else "MLPerf gate",
        "target_agreement": goal.target,
        "bit_budget": goal.budget,
        "raised_to_8_bits": best["layers"],
        "weight_bits_mean": round(widths.weight_bits_mean, 4),
        "predicted_agreement": round(best["agreement"], 4),
        "reached_target": best["agreement"] >= goal.target,
        "uniform_agreement": round(search.tried[0]["agreement"], 4),
        "ranking": ranking,
        "sensitivity": {c.layer: _finite(c.logits_sqnr_db) for c in costs},
        "calibrated": [_point(search.tried[count]) for count in sorted(search.tried)],
        "layer_bits": bits_names(widths.layers),
    }


def _point(point: dict) -> dict:
    return {"raised": point["raised"], "weight_bits_mean": round(point["weight_bits_mean"], 4),
            "agreement": round(point["agreement"], 4),
            "logits_sqnr_db": _finite(point["logits_sqnr_db"])}  # fmt: skip


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 2)
