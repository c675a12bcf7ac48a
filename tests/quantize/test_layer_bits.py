"""The ``--layer-bits`` grammar: parsing, aliases, the weighted mean of the weight bits."""

from __future__ import annotations

import json

import pytest

from core.errors import UserError
from quantize.layer_bits import (
    bits_names,
    explicit_layers,
    parse_layer_bits,
    resolve_layer_bits,
    weight_bits_mean,
)
from quantize.scheme import parse_scheme

LAYERS = ["features.0", "features.1.depthwise", "features.1.pointwise", "classifier"]


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip(), text
    return text


# -- parse_layer_bits ----------------------------------------------------------------------
def test_comma_list_keeps_order_and_normalises_names():
    parsed = parse_layer_bits(" last = W4A8 ,first=w8a8, features.1.depthwise=w6a6 ")
    assert parsed == {"last": "w4a8", "first": "w8a8", "features.1.depthwise": "w6a6"}
    assert list(parsed) == ["last", "first", "features.1.depthwise"]


def test_int8_means_w8a8():
    assert parse_layer_bits("first=int8,last=INT8") == {"first": "w8a8", "last": "w8a8"}


def test_json_file(tmp_path):
    path = tmp_path / "bits.json"
    path.write_text(json.dumps({"first": "w8a8", "classifier": "int8", "fc": "w3a5"}))
    assert parse_layer_bits(str(path)) == {"first": "w8a8", "classifier": "w8a8", "fc": "w3a5"}
    # a file whose name does not end in .json is read as a file too
    other = tmp_path / "bits.txt"
    other.write_text('{"last": "w6a8"}')
    assert parse_layer_bits(str(other)) == {"last": "w6a8"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("first", "not NAME=wXaY"),
        ("first=", "not NAME=wXaY"),
        ("=w8a8", "not NAME=wXaY"),
        ("first=w8a8,,last=w8a8", "not NAME=wXaY"),
        ("", "not NAME=wXaY"),
        ("first=w8a8,first=w4a8", "'first' twice"),
        ("fc=w1a8", "1 weight bits; use 2 to 16"),
        ("fc=w8a17", "17 activation bits; use 2 to 16"),
        ("fc=int4", "not a scheme"),
    ],
)
def test_bad_list_is_one_sentence(text, words):
    with pytest.raises(UserError, match=words) as err:
        parse_layer_bits(text)
    _one_sentence(err)


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"first": "w8a8", "first": "w4a8"}', "gives layer 'first' twice"),
        ('["first", "w8a8"]', "must hold one map"),
        ('{"first": 8}', "must hold one map"),
        ('{"first": "w8a8"', "is not readable JSON"),
        ("{}", "names no layer"),
        ('{"fc": "w20a8"}', "use 2 to 16"),
    ],
)
def test_bad_json_file_is_one_sentence(tmp_path, content, words):
    path = tmp_path / "bits.json"
    path.write_text(content)
    with pytest.raises(UserError, match=words) as err:
        parse_layer_bits(str(path))
    _one_sentence(err)


def test_missing_json_file(tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(UserError, match="does not exist") as err:
        parse_layer_bits(str(missing))
    assert str(missing) in _one_sentence(err)


# -- resolve_layer_bits / explicit_layers ----------------------------------------------------
def test_resolve_defaults_and_aliases():
    default = parse_scheme("w4a8")
    assert resolve_layer_bits(None, LAYERS, default) == {name: (4, 8) for name in LAYERS}
    spec = {"first": "w8a8", "last": "w6a4", "features.1.depthwise": "w2a3"}
    assert resolve_layer_bits(spec, LAYERS, default) == {
        "features.0": (8, 8),
        "features.1.depthwise": (2, 3),
        "features.1.pointwise": (4, 8),
        "classifier": (6, 4),
    }
    assert explicit_layers(spec, LAYERS) == {"features.0", "features.1.depthwise", "classifier"}
    assert explicit_layers(None, LAYERS) == set()


def test_unknown_layer_names_the_close_ones():
    with pytest.raises(UserError, match="'features.1', which is not a quantized layer") as err:
        resolve_layer_bits({"features.1": "w8a8"}, LAYERS, parse_scheme("w4a8"))
    text = _one_sentence(err)
    assert "close: features.1.depthwise, features.1.pointwise" in text
    assert "features.0 ... classifier" in text and "first/last" in text
    with pytest.raises(UserError, match="'fc'") as err:
        explicit_layers({"fc": "w8a8"}, LAYERS)
    assert "close:" not in _one_sentence(err)


@pytest.mark.parametrize(
    "spec, raws",
    [
        ({"first": "w8a8", "features.0": "w4a8"}, ("'first'", "'features.0'")),
        ({"classifier": "w8a8", "last": "w8a8"}, ("'classifier'", "'last'")),
    ],
)
def test_layer_named_by_alias_and_name_is_refused(spec, raws):
    with pytest.raises(UserError, match="twice") as err:
        resolve_layer_bits(spec, LAYERS, parse_scheme("w4a8"))
    text = _one_sentence(err)
    assert all(raw in text for raw in raws)


def test_first_and_last_of_a_one_layer_model_is_that_layer_twice():
    with pytest.raises(UserError, match="gives layer fc twice"):
        resolve_layer_bits({"first": "w8a8", "last": "w8a8"}, ["fc"], parse_scheme("w4a8"))


# -- weight_bits_mean / bits_names ----------------------------------------------------------
def test_weight_bits_mean_is_weighted_by_parameters():
    bits = {"conv": (8, 8), "dw": (2, 8), "fc": (4, 4)}
    parameters = {"conv": 100, "dw": 50, "fc": 850, "not quantized": 10_000}
    # (8*100 + 2*50 + 4*850) / (100 + 50 + 850) = 4300 / 1000
    assert weight_bits_mean(bits, parameters) == pytest.approx(4.3)
    assert weight_bits_mean({"fc": (6, 8)}, parameters) == 6.0


def test_bits_names():
    assert bits_names({"features.0": (8, 8), "fc": (4, 16)}) == {
        "features.0": "w8a8",
        "fc": "w4a16",
    }
