"""``convert_checkpoint`` (graph -> one verified, self-describing .pth) and its loaders.

A converted model is one file holding ``RECORD_FIELDS``, read with ``torch.load(...,
weights_only=True)``; ``load_checkpoint`` rebuilds the model from that file alone. The JSON
sidecar beside it is a record for people (verification summary, graph details, digests);
nothing reads it back, so editing it cannot change what is built.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import torch
from torch import nn

from core.errors import UserError, first_line
from core.files import (
    atomic_path,
    check_output_dir,
    file_lock,
    temporaries_of,
)
from core.profiles import MODEL_NAMES, get_profile
from core.records import Record

from .models import apply_bn_eps
from .registry import build_model, extract_weights
from .verify import VerificationResult

log = logging.getLogger(__name__)

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


def sidecar_path(out: str | os.PathLike) -> Path:
    """``model.pth`` -> ``model.json``: the human-readable record beside the weights."""
    return Path(out).with_suffix(".json")


def convert_command(path: str | os.PathLike) -> str:
    return f"python -m convert --model MODEL --checkpoint GRAPH --out {path}"


@dataclass(kw_only=True)
class ConversionRecord(Record):
    """What ``convert_checkpoint`` wrote and found. ``to_json()`` is the sidecar beside the
    .pth, with the verification summary; the paths written are left out of it."""

    _not_json = ("out", "sidecar")
    format: str = "mlperf-port.convert-record/2"
    note: str = "a record for people: loading rebuilds the model from the .pth alone"
    model_name: str
    num_classes: int
    label_offset: int
    bn_epsilons: dict[str, float]
    bn_encoding: dict[str, str]
    source_file: str
    source_sha256: str
    content_sha256: str
    graph: dict[str, Any]  # data format, input layout, batch-norm encoding, tensor names
    verification: VerificationResult | None
    ignored_tensors: list[str]
    file_sha256: str = ""  # of the .pth, set once it is written
    seconds: float = 0.0
    out: Path
    sidecar: Path

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["verification"] = self.verification.summary() if self.verification else None
        return data


# ============================================================================ conversion


def convert_checkpoint(
    model_name: str,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    verify_images: str | os.PathLike | None = None,
    verify_cache: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    verify: bool = True,
    quiet: bool = False,
    verify_limit: int | None = 32,
    wait: bool = False,
) -> ConversionRecord:
    """Convert an MLPerf frozen graph to the self-describing ``out`` (.pth) plus its sidecar.

    One process writes ``out`` at a time: a second one fails naming the first, or waits
    with ``wait=True``. A graph holding anything but pure tensor ops is refused before any
    work. Verification against TF runs by default; when it fails, UserError is raised and
    nothing is written. Returns the record whose ``to_json()`` the sidecar holds.
    """
    profile = get_profile(model_name)
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix != ".pth":
        raise UserError(f"output {out} must end in .pth (its sidecar goes to the .json beside it)")
    if report is not None:  # before any work: no model file left behind by a failing report
        check_output_dir(Path(report).parent, "--report")
    image_sources = dict(
        verify_images=verify_images, verify_cache=verify_cache, verify_limit=verify_limit
    )
    with _output_lock(out, wait):
        removed = remove_stale_outputs(out)
        if removed:
            log.info("removed %d temporary file(s) a killed run left beside %s", removed, out)
        return _convert_locked(
            profile, checkpoint, out, report, quiet, image_sources if verify else None
        )


@contextlib.contextmanager
def _output_lock(out: Path, wait: bool) -> Iterator[None]:
    """``file_lock`` on ``out``; an unwritable output folder is one sentence, not a trace."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(out, "converted model", wait=wait))
        except OSError as err:
            raise UserError(f"cannot write the converted model to {out.parent} ({err})") from None
        yield


def remove_stale_outputs(out: str | os.PathLike) -> int:
    """Delete the temporaries a killed conversion left for ``out`` and its sidecar only.

    Other files' temporaries in the same folder belong to other writers and stay. Call
    only while holding ``out``'s lock.
    """
    stale = temporaries_of(out) + temporaries_of(sidecar_path(out))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _convert_locked(profile, checkpoint, out, report, quiet, image_sources: dict | None):
    """The conversion itself; ``image_sources`` None skips the comparison with TF."""
    from .graph import read_frozen_graph
    from .safety import check_graph_ops

    started = time.perf_counter()
    graph_def, source_sha256 = read_frozen_graph(checkpoint, profile.archive_member)
    # Refuse a hostile graph at once, also when it will never be run here.
    outputs = _present(graph_def, [profile.logits_tensor, profile.probabilities_tensor])
    check_graph_ops(graph_def, outputs, str(checkpoint))
    extracted = extract_weights(graph_def, profile, source=str(checkpoint))
    layer_tensors = [layer.tf_tensor for layer in extracted.layer_tensors]
    check_graph_ops(graph_def, [extracted.logits_tensor, *layer_tensors], str(checkpoint))
    payload = _checkpoint_payload(profile, checkpoint, source_sha256, extracted)
    # Exactly what loading will build; out does not exist yet, so errors name the conversion.
    torch_model = _module_from_fields(payload, f"the conversion of {checkpoint}")
    log.info(
        "read %d tensors from %s (%s, batch norm %s)",
        len(extracted.used_tensors),
        checkpoint.name,
        extracted.data_format,
        extracted.bn_encoding_summary,
    )
    verification = None
    if image_sources is not None:
        verification = _verify(
            torch_model, checkpoint, graph_def, extracted, profile, quiet=quiet, **image_sources
        )
    record = _conversion_record(payload, extracted, verification, out)
    model_bytes = model_file_bytes(payload)
    record.file_sha256 = hashlib.sha256(model_bytes).hexdigest()
    record.seconds = round(time.perf_counter() - started, 2)
    texts = {record.sidecar: json.dumps(record.to_json(), indent=2) + "\n"}
    if report is not None:
        full = {
            **record.to_json(),
            "verification": verification.to_json() if verification else None,
            "tensors": extracted.source_names,
        }
        texts[Path(report)] = json.dumps(full, indent=2) + "\n"
    _write_outputs(out, model_bytes, texts)
    log.info("wrote %s and %s in %.1f s", out, record.sidecar, record.seconds)
    return record


def model_file_bytes(payload: dict[str, Any]) -> bytes:
    """The .pth file's bytes. Saved to memory, not to the file: torch.save names the zip's
    root folder after the file it writes, so the same graph saved to two (temporary) names
    would give two different files; in memory the root is always "archive"."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _write_outputs(out: Path, model_bytes: bytes, texts: dict[Path, str]) -> None:
    """Write the .pth and the JSON files all or none: each goes to a temporary name, and
    only once every one is written are they renamed, the .pth last (a failing report
    leaves no model file behind). A full disk or any other write error is one sentence."""
    try:
        with contextlib.ExitStack() as stack:  # exits in reverse: the .pth is renamed last
            tmp_model = stack.enter_context(atomic_path(out))
            temporaries = {path: stack.enter_context(atomic_path(path)) for path in texts}
            _write_bytes(tmp_model, model_bytes, out)
            for path, text in texts.items():
                _write_bytes(temporaries[path], text.encode(), path)
    except OSError as err:  # creating or renaming a temporary
        raise _write_failure(out, err) from None


def _write_bytes(tmp: Path, data: bytes, final: Path) -> None:
    try:
        with open(tmp, "wb") as f:
            f.write(data)
    except OSError as err:
        raise _write_failure(final, err) from None


def _write_failure(path: Path, err: OSError) -> UserError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"not enough disk space in {path.parent} to write {path.name}: free some space "
            f"and convert again (nothing was written)"
        )
    return UserError(f"cannot write {path} ({err.strerror or err}): nothing was written")


def _present(graph_def: Any, tensor_names: list[str]) -> list[str]:
    """The names whose node the graph defines (a missing one is the walker's to explain)."""
    defined = {node.name for node in graph_def.node}
    return [name for name in tensor_names if name.split(":")[0] in defined]


def _checkpoint_payload(profile, checkpoint, source_sha256, extracted) -> dict[str, Any]:
    """The converted model file's contents: everything rebuilding needs, and nothing else."""
    built = build_model(profile.name, **extracted.hyperparameters)
    epsilons = {
        name: float(m.eps) for name, m in built.named_modules() if isinstance(m, nn.BatchNorm2d)
    }
    payload = {
        "format": FORMAT,
        "model_name": profile.name,
        "num_classes": int(extracted.num_classes),
        "label_offset": int(extracted.label_offset),
        "bn_epsilons": epsilons,
        "bn_encoding": dict(extracted.bn_encodings),
        "source_file": checkpoint.name,
        "source_sha256": source_sha256,
        "state_dict": {key: value.detach().cpu() for key, value in extracted.state_dict.items()},
    }
    payload["content_sha256"] = content_digest(payload)
    return payload


def _conversion_record(payload: dict[str, Any], extracted, verification, out: Path):
    """The file's fields, what the conversion found in the graph, and where it writes."""
    fields = {key: value for key, value in payload.items() if key not in ("format", "state_dict")}
    return ConversionRecord(
        **fields,
        graph={
            "data_format": extracted.data_format,
            "input_layout": extracted.input_layout,
            "batch_norm": extracted.bn_encoding_summary,
            "batch_norm_layers": extracted.bn_encoding_counts,
            "input_tensor": extracted.input_tensor,
            "logits_tensor": extracted.logits_tensor,
        },
        verification=verification,
        ignored_tensors=extracted.ignored_tensors,
        out=out,
        sidecar=sidecar_path(out),
    )


def _verify(torch_model, checkpoint, graph_def, extracted, profile, *, quiet, **image_sources):
    from .tf_runner import TFGraphRunner
    from .verify import compare_layers, verification_images

    source, names, images = verification_images(profile, **image_sources)
    with TFGraphRunner(
        checkpoint,
        profile,
        graph_def=graph_def,
        input_tensor=extracted.input_tensor,
        logits_tensor=extracted.logits_tensor,
    ) as runner:
        result = compare_layers(
            torch_model,
            runner,
            extracted.layer_tensors,
            extracted.data_format,
            names,
            images,
            source=source,
            quiet=quiet,
        )
    if not quiet:
        print(result.table())
    if not result.passed:
        why = "; ".join(result.failures)
        if result.first_failing_layer:
            why += f" (first layer over tolerance: {result.first_failing_layer})"
        raise UserError(f"the converted {profile.name} does not match TensorFlow: {why}")
    return result


# ============================================================================ loading


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
    module = _module_from_fields(payload, str(path))
    record = {key: value for key, value in payload.items() if key != "state_dict"}
    return module, record


def _module_from_fields(payload: dict[str, Any], label: str) -> nn.Module:
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
