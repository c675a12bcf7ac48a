"""A mixed-precision plan: which layers to raise to 8 bits, chosen on the calibration images.

Under MLPerf's gate, the plan raises the fewest parameters needed for the quantized
network to keep fp32's top-1 on at least the gate's share of the calibration images; within
a bit budget, it keeps the most answers at a mean of at most B weight bits.

1. The network is calibrated twice: at the asked widths and with every layer at 8 bits.
2. Each layer alone at the asked widths is measured (``sensitivity.layer_costs``); layers
   are ranked by the logit noise they add per parameter (the cheap, damaging ones first:
   MobileNet's depthwise convolutions and its first convolution).
3. For every prefix of that ranking, a network is composed from the two calibrations (the
   prefix's layers and the activations they read from the 8-bit one) and its agreement with
   fp32 measured: a forward pass each, no recalibration.
4. The chosen prefix is calibrated for real, as ``--layer-bits`` would calibrate it, and
   its agreement on the calibration images is the plan's prediction. If it falls short of
   the gate, the next prefixes are tried (at most ``RETRIES``).

MLPerf forbids tuning on the evaluation images, so only the calibration images are used.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .layer_bits import bits_names, explicit_layers, weight_bits_mean
from .sensitivity import LayerCost, layer_costs, logit_agreement, logits_of
from .simulated import SimNet, set_quantized
from .wiring import Widths, plan_widths

HIGH = (8, 8)  # what a raised layer runs at
RETRIES = 3  # real calibrations tried past the first, when the gate is not reached


@dataclass(frozen=True)
class Goal:
    """Reach ``target`` agreement with the fewest raised parameters, or (``budget`` set)
    the best agreement at a mean of at most ``budget`` weight bits."""

    target: float
    budget: float | None = None


# calibrate(spec) -> (calibrated SimNet, its Widths, ...), spec a --layer-bits map
Calibrate = Callable[[dict[str, str] | None], tuple]


def plan_mixed_precision(
    calibrate: Calibrate, batches: list[torch.Tensor], spec: dict | None, goal: Goal, quiet: bool
) -> tuple[tuple, dict]:
    """The planned calibration (what ``calibrate`` returned for the plan) and the plan's
    record."""
    low = calibrate(spec)
    low_net, low_widths = low[0], low[1]
    reference = _fp32_logits(low_net, batches)
    costs = layer_costs(low_net, batches, low_widths.layers, quiet)
    ranking = _ranking(costs, low_widths)
    high = calibrate({name: "w8a8" for name in low_widths.layers})[0]
    base = _explicit_spec(spec, low_widths)
    curve = _curve(low_net, high, ranking, low_widths, base, batches, reference, quiet)
    chosen = _choose(curve, goal)
    calibrated, tried = _calibrate_plan(calibrate, curve, chosen, goal, batches, reference)
    best = max(tried, key=lambda t: t["agreement"]) if goal.budget is None else tried[-1]
    if best is not tried[-1]:  # a later try did worse: rebuild the best one
        calibrated = calibrate(best["spec"])
    return calibrated, _record(goal, costs, ranking, curve, tried, best, calibrated[1])


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


def _plan_spec(spec: dict | None, raised: list[str]) -> dict[str, str]:
    return {**(spec or {}), **{name: "w8a8" for name in raised}}


def _curve(low, high, ranking, widths, spec, batches, reference, quiet) -> list[dict]:
    """For each prefix of ``ranking``: the mean weight bits and the agreement of the network
    composed from the two calibrations."""
    composed = copy.deepcopy(low)
    curve = []
    for count in tqdm(range(len(ranking) + 1), desc="mixed precision", disable=quiet):
        plan = _plan_spec(spec, ranking[:count])
        planned = plan_widths(composed, widths.scheme, plan)
        _compose(composed, low, high, planned)
        sqnr, kept = logit_agreement(logits_of(composed, batches), reference)
        mean = weight_bits_mean(planned.layers, planned.parameters)
        curve.append({"raised": count, "weight_bits_mean": mean, "agreement": kept,
                      "logits_sqnr_db": sqnr, "spec": plan})  # fmt: skip
    return curve


def _compose(composed: SimNet, low: SimNet, high: SimNet, planned: Widths) -> None:
    """``composed`` takes each layer and quantizer from ``high`` where ``planned`` has it at
    8 bits and ``low`` keeps it lower, else from ``low``."""
    sources = {"low": dict(low.named_modules()), "high": dict(high.named_modules())}
    modules = dict(composed.named_modules())
    for name, bits in planned.layers.items():
        side = "high" if bits == HIGH else "low"
        _copy_layer(modules[name], sources[side][name])
    for name, bits in planned.quantizers.items():
        side = "high" if bits == 8 else "low"
        _copy_quantizer(modules[name], sources[side][name])
    set_quantized(composed, True)


def _copy_layer(target, source) -> None:
    for buffer in ("weight_q", "weight_scale", "bias_q"):
        setattr(target, buffer, getattr(source, buffer).clone())
    target.weight_bits = source.weight_bits


def _copy_quantizer(target, source) -> None:
    for attribute in ("scale", "zero_point", "bits", "shift", "range"):
        setattr(target, attribute, getattr(source, attribute))


def _choose(curve: list[dict], goal: Goal) -> int:
    """The index in ``curve`` of the plan the goal asks for. Within a budget, ties in
    agreement (a few hundred images give coarse shares) go to the higher logits SQNR."""
    if goal.budget is not None:
        within = [i for i, point in enumerate(curve) if point["weight_bits_mean"] <= goal.budget]
        score = [(curve[i]["agreement"], curve[i]["logits_sqnr_db"]) for i in within]
        return within[score.index(max(score))] if within else 0
    reaching = [i for i, point in enumerate(curve) if point["agreement"] >= goal.target]
    return reaching[0] if reaching else max(range(len(curve)), key=lambda i: curve[i]["agreement"])


def _calibrate_plan(calibrate, curve, chosen, goal, batches, reference):
    """Calibrate the chosen plan for real; under the gate, go on to the next prefixes while
    its real agreement falls short (at most RETRIES more)."""
    tried = []
    for index in range(chosen, min(len(curve), chosen + 1 + RETRIES)):
        spec = curve[index]["spec"]
        calibrated = calibrate(spec)
        _, kept = logit_agreement(logits_of(calibrated[0], batches), reference)
        tried.append({"raised": curve[index]["raised"], "spec": spec, "agreement": kept,
                      "weight_bits_mean": calibrated[1].weight_bits_mean})  # fmt: skip
        if goal.budget is not None or kept >= goal.target:
            break
    return calibrated, tried


def _record(goal, costs, ranking, curve, tried, best, widths: Widths) -> dict:
    return {
        "goal": "bit budget" if goal.budget is not None else "MLPerf gate",
        "target_agreement": goal.target,
        "bit_budget": goal.budget,
        "images": "calibration images only (MLPerf forbids tuning on the evaluated ones)",
        "raised_to_8_bits": ranking[: best["raised"]],
        "weight_bits_mean": round(best["weight_bits_mean"], 4),
        "predicted_agreement": round(best["agreement"], 4),
        "reached_target": best["agreement"] >= goal.target,
        "uniform_agreement": round(curve[0]["agreement"], 4),
        "ranking": ranking,
        "sensitivity": {c.layer: _finite(c.logits_sqnr_db) for c in costs},
        "composed_curve": [_point(p) for p in curve],
        "calibrated": [_point(t) for t in tried],
        "layer_bits": bits_names(widths.layers),
    }


def _point(point: dict) -> dict:
    kept = {"raised": point["raised"], "weight_bits_mean": round(point["weight_bits_mean"], 4),
            "agreement": round(point["agreement"], 4)}  # fmt: skip
    if "logits_sqnr_db" in point:
        kept["logits_sqnr_db"] = _finite(point["logits_sqnr_db"])
    return kept


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 2)
