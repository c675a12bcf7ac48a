"""A user's method, applied between loading the converted model and evaluating it.

``--transform path/to/file.py:function`` or ``--transform package.module:function`` names a
function called once as ``function(model, calibration)``: ``model`` is the converted fp32
module in eval mode, ``calibration`` an ``eval.method.calibration.CalibrationBatches``
(MLPerf-normalised NCHW float32 batches of the calibration set, iterable as often as
needed). It returns the module
to evaluate. ``--quantize SCHEME`` is the built-in transform (``quantize.quantize_model``).

Everything after it is the fp32 run's: cache checks, engines, CPU workers, results.json;
the record (``TransformRecord``) names the function and the sha256 of its source file, so a
stage stamp redoes the evaluation when that file changes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError, first_line
from core.files import sha256_file
from core.profiles import ModelProfile, as_profile
from core.records import Record
from core.sources import source_digest
from eval.method.options import split_spec

log = logging.getLogger(__name__)


@dataclass
class TransformRecord(Record):
    """What was applied to the fp32 model, for results.json and stage stamps."""

    spec: str  # as given: "file.py:function", "package.module:function" or "quantize int8"
    name: str  # the function's name, or the scheme: names the output folder
    source: str  # the file holding the function (the quantize package for --quantize)
    source_sha256: str
    options: dict[str, Any] = field(default_factory=dict)  # --quantize's choices
    applied: dict[str, Any] | None = None  # what the transform reported (quantization_record)


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or Path(target).is_file()


def _module_file(module_name: str, spec: str) -> Path:
    """The source file of ``module_name``, found without running it (parents may import)."""
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as err:
        raise UserError(
            f"cannot find the transform module of {spec!r}: {first_line(err, 200)}"
        ) from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise UserError(f"cannot find the transform module {module_name!r} of {spec!r}")
    return Path(found.origin)


def quantize_options(settings, profile: ModelProfile | str) -> dict[str, Any]:
    """--quantize's choices as recorded and passed to ``quantize_model``: the scheme,
    calibration method, techniques, rounding, the parsed --layer-bits map (a JSON file's
    content, not its path, so editing the file redoes the run), the device (learned rounding
    runs there and may round otherwise on CUDA: in the digests, though not in the folder
    name) and, for --mixed-precision, its budget and target agreement with fp32 (the
    model's MLPerf ratio, ``profile.gate_ratio``)."""
    from quantize.layer_bits import parse_layer_bits
    from quantize.scheme import DEFAULT_METHOD

    spec = settings.layer_bits
    options = {
        "scheme": settings.quantize,
        "calibration_method": settings.calibration_method or DEFAULT_METHOD,
        "equalize": settings.equalize,
        "bias_correction": settings.bias_correction,
        "rounding": settings.rounding,
        "layer_bits": None if spec is None else parse_layer_bits(spec),
        "device": settings.device,
        "mixed_precision": settings.mixed_precision,
    }
    if settings.mixed_precision:
        options["bit_budget"] = settings.bit_budget
        options["target_agreement"] = as_profile(profile).gate_ratio
    return options


def describe_transform(settings, profile: ModelProfile | str) -> TransformRecord | None:
    """The record of ``settings``' transform for ``profile``'s model without applying it
    (None without one): the source file's sha256 is read now, so a stamp can compare it
    before any work."""
    if settings.quantize is not None:
        return TransformRecord(
            spec=f"quantize {settings.quantize}",
            name=settings.quantize,
            source="quantize (the project's package)",
            source_sha256=source_digest("quantize"),
            options=quantize_options(settings, profile),
        )
    if settings.transform is None:
        return None
    target, function = split_spec(settings.transform)
    path = Path(target) if _is_file_target(target) else _module_file(target, settings.transform)
    if not path.is_file():
        raise UserError(f"transform file {path} not found (from --transform {settings.transform})")
    return TransformRecord(
        spec=settings.transform, name=function, source=str(path), source_sha256=sha256_file(path)
    )


def load_transform(settings, record: TransformRecord, store: Path | None = None) -> Callable:
    """The function ``record`` (``describe_transform(settings, profile)``) names, imported
    from the bytes whose sha256 the record holds. ``store``: the folder where --quantize
    caches its calibrations (None: none kept); not in the record, as it changes no number."""
    if settings.quantize is not None:
        from quantize import quantize_model

        options = dict(record.options)
        choices = {
            "scheme": options.pop("scheme"),
            "method": options.pop("calibration_method"),
            **options,
            "store": store,
            "quiet": settings.quiet,
        }
        return functools.partial(quantize_model, **choices)
    target, function_name = split_spec(settings.transform)
    module = _import_file(Path(record.source), record) if _is_file_target(target) else None
    if module is None:
        module = _import_module(target, record)
    function = getattr(module, function_name, None)
    if function is None:
        raise UserError(f"the transform file {record.source} has no function {function_name!r}")
    if not callable(function):
        raise UserError(f"{function_name!r} in {record.source} is not a function")
    return function


def quantization_section(record: TransformRecord | None) -> dict[str, Any] | None:
    """results.json's ``quantization``, from what --quantize reported (``record.applied``):
    the scheme, every layer's width, the mean weight bits, the rounding and the
    mixed-precision plan, each where the report holds it (None: nothing reported)."""
    applied = None if record is None else record.applied
    if not applied:
        return None
    keys = ("scheme", "layer_bits", "weight_bits_mean", "rounding", "mixed_precision")
    return {key: applied[key] for key in keys if key in applied}


def _import_file(path: Path, record: TransformRecord):
    """Run a transform file as a module of its own (named after its digest), from the very
    bytes whose sha256 the record holds: a file edited since is refused, not run."""
    name = f"mlperf_port_transform_{record.source_sha256[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    data = _recorded_bytes(path, record)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # before running it, as an import does (dataclasses need it)
    try:
        exec(compile(data, str(path), "exec"), module.__dict__)  # noqa: S102 (the user's code)
    except Exception as err:  # anything the user's file does on import
        del sys.modules[name]
        raise UserError(
            f"cannot import transform file {path}: {type(err).__name__}: {first_line(err, 200)}"
        ) from None
    return module


def _import_module(module_name: str, record: TransformRecord):
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise UserError(
            f"cannot import transform module {module_name} ({record.source}): "
            f"{type(err).__name__}: {first_line(err, 200)}"
        ) from None
    _recorded_bytes(Path(record.source), record)  # the file imported is the one recorded
    return module


def _recorded_bytes(path: Path, record: TransformRecord) -> bytes:
    """The file's bytes, if they still have the sha256 the record names."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read transform file {path}: {err.strerror or err}") from None
    if hashlib.sha256(data).hexdigest() != record.source_sha256:
        raise UserError(f"transform file {path} changed while it was being loaded: rerun")
    return data


def apply_transform(function: Callable, record: TransformRecord, model, calibration):
    """``function(model, calibration)``, checked: anything it raises, a result that is not
    an ``nn.Module`` or whose logits differ in shape from the fp32 model's is one sentence
    naming it."""
    import torch
    from torch import nn

    sample = next(iter(calibration))[:2]
    with torch.inference_mode():  # before the function runs: it may change model in place
        expected = tuple(model(sample).shape)
    log.info("applying transform %s to the fp32 model", record.spec)
    result = _call(f"the transform {record.spec}", function, model, calibration)
    if not isinstance(result, nn.Module):
        raise UserError(
            f"the transform {record.spec} returned {type(result).__name__}, not a torch.nn.Module"
        )
    result.eval()
    with torch.inference_mode():
        what = f"the model returned by the transform {record.spec}"
        logits = _call(what, result, sample, on=" on a calibration batch")
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(
            f"the transform {record.spec} changed the logits to {shape}; the evaluation "
            f"needs {expected} (batch, classes), as the fp32 model gives"
        )
    applied = getattr(result, "quantization_record", None)
    if isinstance(applied, dict):
        record.applied = applied
    return result


def _call(what: str, function: Callable, *args, on: str = ""):
    """``function(*args)``; anything but a UserError it raises becomes one sentence."""
    try:
        return function(*args)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{what} raised {type(err).__name__}{on}: {first_line(err, 200)}") from None


def spec_digest(record: TransformRecord | None) -> str | None:
    """One digest of everything a transform's output depends on (spec, source, options)."""
    if record is None:
        return None
    # JSON with sorted keys: a --layer-bits map hashes the same whatever order it was given.
    options = json.dumps(record.options, sort_keys=True, default=str)
    text = f"{record.spec}\0{record.source_sha256}\0{options}"
    return hashlib.sha256(text.encode()).hexdigest()
