"""The calibration store: an unchanged rerun reuses the kept calibration (the same logits,
both back ends), any change to what a calibration is made from calibrates again, a damaged
or foreign file is recalibrated over with a warning, an unwritable store only warns, and
without a store nothing is written."""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import pytest
import torch

import quantize.model as model_module
import quantize.store as store_module
from fixtures import photo_models as models
from quantize import quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION, HELD_OUT = 8, 8
# 8-bit weights: no clip search, so each calibration takes about a second
BASE = {"scheme": "w8a8", "rounding": "nearest", "bias_correction": False, "quiet": True}


@pytest.fixture(scope="module")
def images():
    return models.crops(CALIBRATION, 101, "mobilenet"), models.crops(HELD_OUT, 102, "mobilenet")


def _quantize(model, calibration, **options):
    return quantize_model(model, [calibration], **{**BASE, **options})


def _logits(model, batch):
    with torch.inference_mode():
        return model(batch)


@pytest.fixture(scope="module")
def stored(mobilenet, images, tmp_path_factory):
    """One store, calibrated into once and then reused: (store, first, second)."""
    store = tmp_path_factory.mktemp("calibrations")
    first = _quantize(mobilenet, images[0], store=store)
    second = _quantize(mobilenet, images[0], store=store)
    return store, first, second


@pytest.mark.slow
def test_an_unchanged_rerun_reuses_the_calibration(stored, images):
    store, first, second = stored
    before, after = first.quantization_record, second.quantization_record
    assert (before["reused"], after["reused"]) == (False, True)
    assert after["calibration_file"] == before["calibration_file"]
    path = Path(before["calibration_file"])
    assert path.parent == store and path.is_file()
    assert [p.name for p in store.iterdir()] == [path.name]  # no temporary left behind
    assert after["layer_bits"] == before["layer_bits"]
    assert torch.equal(_logits(second, images[1]), _logits(first, images[1]))


def _changed_weight(model):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.features[3].pointwise.conv.weight[0, 0, 0, 0] += 1e-3
    return changed


def _changed_pixel(images):
    changed = images.clone()
    changed[3, 1, 100, 100] += 1 / 127.5  # one pixel, one grey level
    return changed


CHANGES = {
    "scheme": lambda model, images: (model, images, {"scheme": "w8a6"}),
    "layer_bits": lambda model, images: (model, images, {"layer_bits": "last=w8a6"}),
    "rounding": lambda model, images: (model, images, {"rounding": "auto"}),
    "bias_correction": lambda model, images: (model, images, {"bias_correction": True}),
    "method": lambda model, images: (model, images, {"method": "minmax"}),
    "pixel": lambda model, images: (model, _changed_pixel(images), {}),
    "weight": lambda model, images: (_changed_weight(model), images, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_calibrates_again(stored, mobilenet, images, change):
    store, first, _ = stored
    model, calibration, options = CHANGES[change](mobilenet, images[0])
    changed = _quantize(model, calibration, store=store, **options)
    record = changed.quantization_record
    assert record["reused"] is False
    assert record["calibration_file"] != first.quantization_record["calibration_file"]
    path = Path(record["calibration_file"])
    assert path.parent == store and path.is_file()
    path.unlink()  # about 34 MB each


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00 not a calibration \xff" * 1000)


def _foreign_key(path: Path) -> None:
    content = torch.load(path, weights_only=True)
    torch.save({**content, "key": "0" * 64}, path)


DAMAGES = {"truncated": _truncate, "garbage": _garbage, "another key": _foreign_key}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_file_is_recalibrated_over(stored, mobilenet, images, tmp_path, caplog, damage):
    _, first, _ = stored
    kept = Path(first.quantization_record["calibration_file"])
    path = tmp_path / kept.name
    path.write_bytes(kept.read_bytes())
    DAMAGES[damage](path)
    with caplog.at_level(logging.WARNING, logger="quantize.store"):
        again = _quantize(mobilenet, images[0], store=tmp_path)
    record = again.quantization_record
    assert record["reused"] is False and record["calibration_file"] == str(path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in r.getMessage() for r in warnings), caplog.text
    assert torch.equal(_logits(again, images[1]), _logits(first, images[1]))
    third = _quantize(mobilenet, images[0], store=tmp_path)  # the file was replaced
    assert third.quantization_record["reused"] is True
    assert torch.equal(_logits(third, images[1]), _logits(first, images[1]))


@pytest.mark.slow
def test_an_unwritable_store_only_warns(stored, mobilenet, images, tmp_path, caplog):
    _, first, _ = stored
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store folder should be")
    with caplog.at_level(logging.WARNING, logger="quantize.store"):
        quantized = _quantize(mobilenet, images[0], store=blocked)
    assert "could not keep the calibration" in caplog.text
    assert "reused" not in quantized.quantization_record  # nothing kept, nothing named
    assert blocked.read_text() == "a file where the store folder should be"
    assert torch.equal(_logits(quantized, images[1]), _logits(first, images[1]))


@pytest.mark.slow
def test_the_record_names_no_file_it_could_not_keep(mobilenet, images, tmp_path):
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store folder should be")
    record = _quantize(mobilenet, images[0], store=blocked).quantization_record
    assert "calibration_file" not in record and "reused" not in record


@contextlib.contextmanager
def _full_disk(_path):
    yield Path("/dev/full")  # every write fails: no space left on the device


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_only_warns(stored, mobilenet, images, tmp_path, monkeypatch, caplog):
    _, first, _ = stored
    monkeypatch.setattr(store_module, "atomic_path", _full_disk)
    with caplog.at_level(logging.WARNING, logger="quantize.store"):
        quantized = _quantize(mobilenet, images[0], store=tmp_path)
    assert "could not keep the calibration" in caplog.text
    assert torch.equal(_logits(quantized, images[1]), _logits(first, images[1]))


@pytest.mark.slow
def test_without_a_store_nothing_is_written(mobilenet, images, tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("nothing is saved without a store")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(model_module, "save_calibration", refuse)
    monkeypatch.setattr(store_module, "save_calibration", refuse)
    record = _quantize(mobilenet, images[0]).quantization_record
    assert "calibration_file" not in record and "reused" not in record
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_int8_back_end_from_a_reused_calibration(mobilenet, images, tmp_path):
    options = {"scheme": "int8", "store": tmp_path, "equalize": True}
    first = _quantize(mobilenet, images[0], **options)
    second = _quantize(mobilenet, images[0], **options)
    assert (first.quantization_record["reused"], second.quantization_record["reused"]) == (
        False,
        True,
    )
    assert type(second) is type(first) and type(first).__name__ == "Int8Net"
    assert torch.equal(_logits(second, images[1]), _logits(first, images[1]))
