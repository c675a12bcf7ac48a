"""The converted model file (``.pth``): its format, its digest, and the loader that rebuilds
the model from it alone.

A converted model is one file holding ``RECORD_FIELDS``, read with ``torch.load(...,
weights_only=True)``; ``load_checkpoint`` checks every field and rebuilds the model. Any
file this converter did not write is one UserError sentence.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import torch
from torch import nn

from core.errors import UserError, first_line
from core.profiles import MODEL_NAMES

from .models import apply_bn_eps
from .registry import build_model

FORMAT = "mlperf-port.converted-model/2"
# The fields of a converted model file and the type each must have (mappings: key, value):
# source_sha256 is the frozen graph's, content_sha256 that of all the others (content_digest).
RECORD_FIELDS: dict[str, Any] = {
    "format": str,
    "model_name": str,
    "num_classes": int,
    "label_offset": int,
    "bn_epsilons": dict[str, float],
    "bn_encoding": dict[str, str],
    "source_file": str,
    "source_sha256": str,
    "state_dict": dict[str, torch.Tensor],
    "content_sha256": str,
}


def convert_command(path: str | os.PathLike) -> str:
    return f"python -m convert --model MODEL --checkpoint GRAPH --out {path}"


def model_file_bytes(payload: dict[str, Any]) -> bytes:
    """The .pth file's bytes. Saved to memory, not to the file: torch.save names the zip's
    root folder after the file it writes, so the same graph saved to two (temporary) names
    would give two different files; in memory the root is always "archive"."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(
    path: str | os.PathLike, *, expected_model: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a converted model from its ``.pth`` alone; return it (eval mode) and its record
    (the file's fields but the tensors, plus ``file_sha256``: the digest of the bytes loaded).

    Any file this converter did not write (an older bare state_dict, an unknown field, a
    wrong type, altered tensors, a truncated or non-PyTorch file) is one UserError sentence;
    ``expected_model`` also refuses a file that holds another model.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"converted model {path} does not exist")
    try:
        data = path.read_bytes()  # read once: the digest below describes what was loaded
    except OSError as err:
        raise UserError(f"cannot read converted model {path} ({err.strerror or err})") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or foreign files
        raise UserError(
            f"cannot load {path}: it is not a converted model file or it is truncated "
            f"({_load_failure(err)})"
        ) from None
    module, record = module_from_payload(payload, path)
    record["file_sha256"] = hashlib.sha256(data).hexdigest()
    if expected_model is not None and record["model_name"] != expected_model:
        raise UserError(
            f"{path} holds a converted {record['model_name']} model, not {expected_model}"
        )
    return module, record


def _load_failure(err: Exception) -> str:
    """What went wrong in ``torch.load``, in a few words."""
    if isinstance(err, pickle.UnpicklingError):  # weights_only met something else
        return "it holds objects other than tensors and plain values, which are never loaded"
    first = first_line(err, 160)
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def load_model(
    path_or_model: str | os.PathLike, path: str | os.PathLike | None = None
) -> nn.Module:
    """``load_model(path)``: the model of ``load_checkpoint`` without its record.

    The older call ``load_model(model_name, path)`` also checks that the file holds that model.
    """
    if path is None:
        return load_checkpoint(path_or_model)[0]
    return load_checkpoint(path, expected_model=str(path_or_model))[0]


def module_from_payload(payload: Any, path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Check a converted model file's contents field by field and build its model (eval
    mode); return it and the file's fields but the tensors."""
    _check_format(payload, path)
    _check_field_types(payload, path)
    try:
        digest = content_digest(payload)
    except (RuntimeError, TypeError, ValueError) as err:  # e.g. a sparse or meta tensor
        raise UserError(f"{path} holds tensors that cannot be read back ({err})") from None
    if digest != payload["content_sha256"]:
        raise UserError(
            f"{path}'s contents do not match the digest recorded with them: the file was "
            f"altered after conversion; convert it again with {convert_command(path)}"
        )
    module = module_from_fields(payload, str(path))
    record = {key: value for key, value in payload.items() if key != "state_dict"}
    return module, record


def module_from_fields(payload: dict[str, Any], label: str) -> nn.Module:
    """The model (eval mode) that a converted model's fields describe; ``label`` names their
    origin (a file, or a conversion in progress) in the one-sentence errors."""
    model_name, num_classes = payload["model_name"], payload["num_classes"]
    if model_name not in MODEL_NAMES:
        raise UserError(
            f"{label} names the model {model_name!r}; known models: {', '.join(MODEL_NAMES)}"
        )
    if num_classes < 1000 or payload["label_offset"] != num_classes - 1000:
        raise UserError(
            f"{label} has num_classes {num_classes} and label_offset {payload['label_offset']}; "
            "a converted model has 1000 or more classes and label_offset = num_classes - 1000"
        )
    module = build_model(model_name, num_classes=num_classes)
    _apply_epsilons(module, payload["bn_epsilons"], label)
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        first = first_line(err)
        raise UserError(f"{label} does not hold a {model_name} state_dict ({first})") from None
    return module.eval()


def _check_format(payload: Any, path: Path) -> None:
    """A dict tagged with this converter's format; an older bare state_dict says so."""
    is_dict = isinstance(payload, dict)
    if is_dict and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(
            f"{path} is a converted model in the older format (a bare state_dict whose "
            f"settings lived in its .json); convert it again with {convert_command(path)}"
        )
    if not is_dict or payload.get("format") != FORMAT:
        found = payload.get("format") if is_dict else type(payload).__name__
        raise UserError(
            f"{path} is not a converted model of format {FORMAT} (found {found!r}); "
            f"convert it again with {convert_command(path)}"
        )


def _check_field_types(payload: dict[str, Any], path: Path) -> None:
    """Exactly the known fields, each of its type (mappings down to their entries)."""
    unknown = sorted(set(payload) - set(RECORD_FIELDS))
    if unknown:
        raise UserError(
            f"{path} holds the unknown field {unknown[0]!r}, which this converter never "
            f"writes; the file was edited or made elsewhere: convert it again with "
            f"{convert_command(path)}"
        )
    for field, annotation in RECORD_FIELDS.items():
        if field not in payload:
            raise UserError(f"{path} lacks the field {field!r}; convert it again")
        value, kind = payload[field], get_origin(annotation) or annotation
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(
                f"{path} has field {field!r} of type {type(value).__name__}, "
                f"expected {kind.__name__}; convert it again"
            )
    for field, annotation in RECORD_FIELDS.items():
        if get_origin(annotation) is not dict:
            continue
        key_type, value_type = get_args(annotation)
        for key, value in payload[field].items():
            if not isinstance(key, key_type) or not isinstance(value, value_type):
                raise UserError(
                    f"{path} has an entry {key!r} of type {type(value).__name__} in field "
                    f"{field!r}, expected {value_type.__name__}; convert it again"
                )


def _apply_epsilons(module: nn.Module, epsilons: dict[str, float], label: str) -> None:
    """Set every batch-norm layer's epsilon from ``epsilons``: all of them, each exactly once.

    They are checked here (one UserError sentence naming ``label``); ``apply_bn_eps`` sets them.
    """
    layers = {name for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if set(epsilons) != layers:
        differ = sorted(set(epsilons) ^ layers)
        raise UserError(
            f"{label}'s bn_epsilons do not name exactly the batch-norm layers of the model "
            f"(first difference: {differ[0]!r})"
        )
    for name, eps in epsilons.items():
        # 0 is legitimate: a batch norm folded into its conv is an exact bias-only layer.
        if not (math.isfinite(eps) and eps >= 0):
            raise UserError(f"{label} has batch-norm epsilon {eps!r} for {name}, not a float >= 0")
    apply_bn_eps(module, epsilons)


def content_digest(payload: dict[str, Any]) -> str:
    """sha256 over every field but the digest itself: the settings as canonical JSON, then
    every tensor's name, dtype, shape and bytes in name order."""
    settings = {k: v for k, v in payload.items() if k not in ("state_dict", "content_sha256")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    state_dict = payload["state_dict"]
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"\n{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(np.ascontiguousarray(tensor.numpy()).reshape(-1).view(np.uint8))
    return digest.hexdigest()
