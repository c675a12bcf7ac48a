"""Mixed-precision plans through quantize_model: the refusals, a plan within a bit budget,
plans under the agreement gate (reached and out of reach), a --layer-bits map with aliases
under a plan, and one plan on the ResNet-50 stand-in."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import quantize.model as model_module
from convert.models.mobilenet_v1 import MobileNetV1
from core.errors import UserError
from fixtures import photo_models as models
from quantize import mixed, parse_scheme, quantize_model
from quantize.model import mixed_goal
from quantize.simulated import SimNet, set_quantized
from quantize.wiring import input_quantizers

pytestmark = pytest.mark.usefixtures("one_thread")

# Each plan calibrates the stand-in several times and runs it once per layer and per prefix
# of the ranking: a test using a plan fixture is slow.

CALIBRATION, HELD_OUT = 8, 8
BUDGET = 5.0


def _memo(function, key):
    cache: dict = {}

    def remembered(*args):
        found = key(*args)
        if found not in cache:
            cache[found] = function(*args)
        return cache[found]

    return remembered


def _calibration_key(model, batches, parsed, spec, choices):
    images = tuple((batch.data_ptr(), tuple(batch.shape)) for batch in batches)
    return id(model), images, parsed, json.dumps(spec, sort_keys=True), choices


def _costs_key(net, _batches, layers, _quiet):
    return id(net), tuple(layers.items())


@pytest.fixture(scope="module", autouse=True)
def shared_plan_steps():
    """A calibration per --layer-bits map, and the layer costs of a calibrated network,
    are the same for every goal on the same model and images: each is computed once here
    and shared between the plans, so each goal's own choice is tested for a fraction of
    the time. The first plan to need one computes it for real."""
    patch = pytest.MonkeyPatch()
    patch.setattr(
        model_module, "calibrated_net", _memo(model_module.calibrated_net, _calibration_key)
    )
    patch.setattr(mixed, "layer_costs", _memo(mixed.layer_costs, _costs_key))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def images():
    return models.crops(CALIBRATION, 101, "mobilenet"), models.crops(HELD_OUT, 102, "mobilenet")


def _plan(model, calibration, scheme="w4a8", **options):
    """The quantized model and (a copy of) its record: shared calibrations may hand the
    same network to two plans, and each sets its record on it."""
    quantized = quantize_model(
        model, [calibration], scheme, rounding="nearest", bias_correction=False,
        mixed_precision=True, quiet=True, **options,
    )  # fmt: skip
    return quantized, copy.deepcopy(quantized.quantization_record)


def _logits(model, batch):
    with torch.inference_mode():
        return model(batch)


def _parameters(net: SimNet) -> dict[str, int]:
    return {name: layer.weight.numel() for name, layer in net.layers()}


def _mean_bits(layer_bits: dict[str, str], parameters: dict[str, int]) -> float:
    weight_bits = {name: int(bits[1:].split("a")[0]) for name, bits in layer_bits.items()}
    total = sum(parameters.values())
    return sum(weight_bits[name] * parameters[name] for name in parameters) / total


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "mixed_on", "budget", "words"),
    [
        ("int8", True, None, "--mixed-precision"),
        ("w8a8", True, None, "--mixed-precision"),
        ("w8a16", True, None, "--mixed-precision"),
        ("w4a8", False, 5.0, "--bit-budget"),
        ("w4a8", True, 3.0, "--bit-budget"),
        ("w4a8", True, 3.99, "--bit-budget"),
        ("w4a8", True, 8.5, "--bit-budget"),
        ("w6a6", True, 5.0, "--bit-budget"),
    ],
)
def test_refused_goals_are_one_sentence(scheme, mixed_on, budget, words):
    with pytest.raises(UserError) as err:
        mixed_goal(parse_scheme(scheme), mixed_on, budget, 0.98)
    message = str(err.value)
    assert "\n" not in message and words in message


def _untouched_calibration():
    raise AssertionError("a refused plan must not read the calibration images")
    yield  # pragma: no cover


@pytest.mark.parametrize(
    ("scheme", "options"),
    [
        ("int8", {"mixed_precision": True}),
        ("w8a8", {"mixed_precision": True}),
        ("w4a8", {"bit_budget": 5.0}),
        ("w4a8", {"mixed_precision": True, "bit_budget": 3.0}),
        ("w4a8", {"mixed_precision": True, "bit_budget": 9.0}),
    ],
)
def test_quantize_model_refuses_before_any_work(scheme, options):
    with pytest.raises(UserError) as err:
        quantize_model(MobileNetV1(), _untouched_calibration(), scheme, quiet=True, **options)
    assert "\n" not in str(err.value)


def test_goals_the_scheme_allows():
    w4a8 = parse_scheme("w4a8")
    assert mixed_goal(w4a8, False, None, 0.98) is None
    assert mixed_goal(w4a8, True, None, 0.9) == mixed.Goal(0.9, None)
    assert mixed_goal(w4a8, True, 4, 0.98) == mixed.Goal(0.98, 4.0)  # the bounds are in
    assert mixed_goal(w4a8, True, 8, 0.98) == mixed.Goal(0.98, 8.0)
    assert mixed_goal(parse_scheme("w8a4"), True, 8.0, 0.98) == mixed.Goal(0.98, 8.0)


# -- within a bit budget ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def budget_plan(mobilenet, images, tmp_path_factory):
    store = tmp_path_factory.mktemp("plans")
    return (*_plan(mobilenet, images[0], bit_budget=BUDGET, store=store), store)


def _in_order(names: list[str], ranking: list[str]) -> bool:
    positions = [ranking.index(name) for name in names]
    return positions == sorted(positions) and len(set(names)) == len(names)


@pytest.mark.slow
def test_budget_plan_raises_the_layers_it_names(budget_plan):
    quantized, record, _ = budget_plan
    plan = record["mixed_precision"]
    raised = plan["raised_to_8_bits"]
    assert plan["goal"] == "bit budget" and plan["bit_budget"] == BUDGET
    assert raised and _in_order(raised, plan["ranking"])
    assert plan["layer_bits"] == record["layer_bits"]
    for name, bits in record["layer_bits"].items():
        assert bits == ("w8a8" if name in raised else "w4a8"), name
    mean = _mean_bits(record["layer_bits"], _parameters(quantized))
    assert record["weight_bits_mean"] == pytest.approx(mean, abs=1e-4)
    assert 4.0 < plan["weight_bits_mean"] == record["weight_bits_mean"] <= BUDGET
    layers = [name for name, _ in quantized.layers()]
    assert sorted(plan["ranking"]) == sorted(layers)  # every layer runs w4a8 before a plan
    assert set(plan["sensitivity"]) == set(layers)


@pytest.mark.slow
def test_budget_plan_predicts_its_calibrated_agreement(budget_plan, images):
    quantized, record, _ = budget_plan
    plan = record["mixed_precision"]
    kept = [p for p in plan["calibrated"] if p["raised"] == len(plan["raised_to_8_bits"])]
    assert len(kept) == 1 and kept[0]["weight_bits_mean"] == plan["weight_bits_mean"]
    assert kept[0]["agreement"] == plan["predicted_agreement"]
    assert 0.0 <= plan["predicted_agreement"] <= 1.0
    assert 0.0 <= plan["uniform_agreement"] <= 1.0
    assert plan["reached_target"] == (plan["predicted_agreement"] >= plan["target_agreement"])
    assert _agreement(quantized, images[0]) == pytest.approx(plan["predicted_agreement"], abs=1e-4)


@pytest.mark.slow
def test_budget_plan_is_the_best_the_budget_allows(budget_plan):
    """Composed from two calibrations, the plan is the best prefix within the budget; each
    plan calibrated whole, it raises the ranked layers in order while they fit."""
    quantized, record, _ = budget_plan
    plan = record["mixed_precision"]
    raised = plan["raised_to_8_bits"]
    if "composed_curve" in plan:
        curve = plan["composed_curve"]
        assert [point["raised"] for point in curve] == list(range(len(plan["ranking"]) + 1))
        assert (curve[0]["weight_bits_mean"], curve[-1]["weight_bits_mean"]) == (4.0, 8.0)
        means = [point["weight_bits_mean"] for point in curve]
        assert means == sorted(means)
        assert raised == plan["ranking"][: len(raised)]
        within = [point["agreement"] for point in curve if point["weight_bits_mean"] <= BUDGET]
        assert curve[len(raised)]["agreement"] == max(within) >= curve[0]["agreement"]
        return
    parameters = _parameters(quantized)
    for name in plan["ranking"]:
        if name not in raised:  # left out: it would not fit beside the raised ones
            bits = {**record["layer_bits"], name: "w8a8"}
            assert _mean_bits(bits, parameters) > BUDGET, name


@pytest.mark.slow
def test_budget_plan_is_reused_from_the_store(budget_plan, mobilenet, images):
    quantized, record, store = budget_plan
    again, second = _plan(mobilenet, images[0], bit_budget=BUDGET, store=store)
    assert (record["reused"], second["reused"]) == (False, True)
    assert second["calibration_file"] == record["calibration_file"]
    assert second["mixed_precision"] == record["mixed_precision"]
    assert torch.equal(_logits(again, images[1]), _logits(quantized, images[1]))


def _agreement(net: SimNet, batch) -> float:
    """The share of ``batch`` on which ``net`` keeps the top-1 of the fp32 network it was
    calibrated from (its quantization off)."""
    fp32 = copy.deepcopy(net)
    set_quantized(fp32, False)
    kept = _logits(net, batch).argmax(1) == _logits(fp32, batch).argmax(1)
    return float(kept.double().mean())


# -- under the gate --------------------------------------------------------------------------
@pytest.mark.slow
def test_gate_already_reached_raises_nothing(budget_plan, mobilenet, images):
    quantized, record = _plan(mobilenet, images[0], target_agreement=0.0)
    plan = record["mixed_precision"]
    assert plan["goal"] == "MLPerf gate" and plan["reached_target"] is True
    assert plan["raised_to_8_bits"] == [] and plan["weight_bits_mean"] == 4.0
    assert set(record["layer_bits"].values()) == {"w4a8"}
    assert [point["raised"] for point in plan["calibrated"]] == [0]
    assert plan["predicted_agreement"] == plan["uniform_agreement"]
    uniform = quantize_model(
        mobilenet, [images[0]], "w4a8", rounding="nearest", bias_correction=False, quiet=True
    )
    assert torch.equal(_logits(quantized, images[1]), _logits(uniform, images[1]))


@pytest.mark.slow
def test_gate_out_of_reach_keeps_the_best_calibrated_try(budget_plan, mobilenet, images):
    quantized, record = _plan(mobilenet, images[0], target_agreement=1.01)
    plan = record["mixed_precision"]
    assert plan["reached_target"] is False and len(plan["calibrated"]) >= 2
    best = max(point["agreement"] for point in plan["calibrated"])
    assert plan["predicted_agreement"] == best
    count = len(plan["raised_to_8_bits"])
    kept = [p for p in plan["calibrated"] if p["raised"] == count]
    assert len(kept) == 1 and kept[0]["agreement"] == best
    assert plan["weight_bits_mean"] == kept[0]["weight_bits_mean"] == record["weight_bits_mean"]
    assert plan["raised_to_8_bits"] == plan["ranking"][:count]
    raised = set(plan["raised_to_8_bits"])
    assert {name for name, bits in record["layer_bits"].items() if bits == "w8a8"} == raised
    assert _agreement(quantized, images[0]) == pytest.approx(best, abs=1e-4)


@pytest.mark.slow
def test_layer_bits_aliases_under_a_plan(mobilenet, images):
    """The user's aliases stand for layers a plan also names: ``last`` below 8 bits is in
    the ranking, and the out-of-reach gate calibrates plans raising it, the alias still in
    the map; ``first`` at 8 bits stays there."""
    spec = {"first": "w8a8", "last": "w4a4"}
    _, record = _plan(mobilenet, images[0], layer_bits=spec, target_agreement=1.01)
    plan = record["mixed_precision"]
    ranking = plan["ranking"]
    assert "features.0" not in ranking and "classifier" in ranking
    assert len(ranking) == len(record["layer_bits"]) - 1
    assert record["layer_bits"]["features.0"] == "w8a8"
    raised = plan["raised_to_8_bits"]
    assert record["layer_bits"]["classifier"] == ("w8a8" if "classifier" in raised else "w4a4")
    assert record["input_bits"] == 8


# -- ResNet-50 -------------------------------------------------------------------------------
@pytest.mark.slow
def test_resnet_plan_names_resnet_layers():
    """w4a4 within 5 bits: each raised layer also reads 8-bit activations (a quantizer two
    layers read, as a bottleneck's conv1 and shortcut do, takes the wider)."""
    resnet = models.resnet(seed=0, images=4)
    small = F.interpolate(models.crops(CALIBRATION, 201, "resnet"), size=64, mode="area")
    quantized, record = _plan(resnet, small, "w4a4", bit_budget=BUDGET)
    plan, layer_bits = record["mixed_precision"], record["layer_bits"]
    raised, fp32_names = plan["raised_to_8_bits"], dict(resnet.named_modules())
    assert raised and sorted(plan["ranking"]) == sorted(layer_bits)
    for name, bits in layer_bits.items():
        assert name in fp32_names and bits == ("w8a8" if name in raised else "w4a4"), name
    assert plan["weight_bits_mean"] <= BUDGET
    readers: dict[str, list[str]] = {}
    for layer, quantizer in input_quantizers(quantized).items():
        readers.setdefault(quantizer, []).append(layer)
    modules = dict(quantized.named_modules())
    for quantizer, layers in readers.items():
        if quantizer != "input_quant":
            expected = 8 if set(layers) & set(raised) else 4
            assert modules[quantizer].bits == expected, (quantizer, layers)
    held_out = models.crops(2, 202, "resnet")
    assert isinstance(quantized, SimNet)
    logits, reference = _logits(quantized, held_out), _logits(resnet, held_out)
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
