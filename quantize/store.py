"""Calibrations kept on disk: an unchanged rerun reuses one, any change recalibrates.

A calibration is keyed by what it is made from: the fp32 model's weights, the calibration
images themselves (their float32 bytes), the scheme, ``--layer-bits``, every recipe choice,
the mixed-precision goal and the quantize package's own source. The file holds the key, the
calibrated ``SimNet``'s buffers and attributes and its record; it is written atomically and
read back with ``torch.load(weights_only=True)``. A file whose key or content does not fit
is recalibrated over (with a warning), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from core.errors import first_line
from core.files import atomic_path
from core.sources import source_digest

from .simulated import ActQuant, QuantLayer, SimNet, set_quantized

log = logging.getLogger(__name__)

QUANTIZER_ATTRIBUTES = ("scale", "zero_point", "bits", "shift", "range")


def calibration_key(model: torch.nn.Module, batches: list[torch.Tensor], options: dict) -> str:
    """sha256 of everything a calibration depends on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    for batch in batches:
        digest.update(str(tuple(batch.shape)).encode())
        digest.update(batch.numpy().tobytes())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    digest.update(source_digest("quantize").encode())
    return digest.hexdigest()


def store_path(store: str | Path, key: str) -> Path:
    return Path(store) / f"calibration-{key[:24]}.pt"


def save_calibration(path: Path, key: str, net: SimNet, record: dict) -> bool:
    """``net`` (calibrated) and its record, under ``key``, atomically; False (with a
    warning) when it could not be written: the store is only a cache."""
    content = {
        "key": key,
        "state": {name: value.clone() for name, value in net.state_dict().items()},
        "layers": {name: layer.weight_bits for name, layer in net.layers()},
        "quantizers": {
            name: [getattr(quant, a) for a in QUANTIZER_ATTRIBUTES]
            for name, quant in net.act_quants()
        },
        "record": record,
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(content, tmp)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        reason = getattr(err, "strerror", None) or first_line(err, 200)
        log.warning("could not keep the calibration in %s (%s)", path, reason)
        return False
    return True


def load_calibration(path: Path, key: str, net: SimNet) -> dict | None:
    """Fill the uncalibrated ``net`` from ``path`` if it holds ``key``: its record, or None
    (no file, another key, or a file that does not fit)."""
    if not path.is_file():
        return None
    try:
        content = torch.load(path, weights_only=True)
        if content.get("key") != key:
            log.warning("%s holds another calibration: calibrating again", path)
            return None
        net.load_state_dict(content["state"])
        _restore_attributes(net, content)
    except Exception as err:  # anything a damaged file does on load: recalibrate
        log.warning("%s is not a usable calibration (%s): calibrating again", path, err)
        return None
    set_quantized(net, True)
    return content["record"]


def _restore_attributes(net: SimNet, content: dict) -> None:
    modules = dict(net.named_modules())
    for name, bits in content["layers"].items():
        layer = modules[name]
        if not isinstance(layer, QuantLayer):
            raise ValueError(f"{name} is not a quantized layer")
        layer.weight_bits = int(bits)
    for name, values in content["quantizers"].items():
        quant = modules[name]
        if not isinstance(quant, ActQuant):
            raise ValueError(f"{name} is not an activation quantizer")
        for attribute, value in zip(QUANTIZER_ATTRIBUTES, values, strict=True):
            setattr(quant, attribute, tuple(value) if attribute == "range" else value)
