"""``convert_checkpoint``: an MLPerf frozen graph -> one verified, self-describing .pth.

The file's format and its loader live in ``convert.model_file``; ``load_checkpoint``,
``load_model`` and the format's names are also importable from here, where callers have
always found them. The JSON sidecar beside the .pth is a record for people (verification
summary, graph details, digests); nothing reads it back, so editing it cannot change what
is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.disk import is_disk_full
from core.errors import UserError
from core.files import (
    atomic_path,
    check_output_dir,
    file_lock,
    temporaries_of,
)
from core.profiles import get_profile
from core.records import Record

from .model_file import (
    FORMAT,
    RECORD_FIELDS,
    content_digest,
    convert_command,
    load_checkpoint,
    load_model,
    model_file_bytes,
    module_from_fields,
    module_from_payload,
)
from .registry import build_model, extract_weights
from .verify import VerificationResult

__all__ = [
    "FORMAT",
    "RECORD_FIELDS",
    "ConversionRecord",
    "content_digest",
    "convert_checkpoint",
    "convert_command",
    "load_checkpoint",
    "load_model",
    "model_file_bytes",
    "module_from_payload",
    "remove_stale_outputs",
    "sidecar_path",
]

log = logging.getLogger(__name__)


def sidecar_path(out: str | os.PathLike) -> Path:
    """``model.pth`` -> ``model.json``: the human-readable record beside the weights."""
    return Path(out).with_suffix(".json")


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
    torch_model = module_from_fields(payload, f"the conversion of {checkpoint}")
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
    if is_disk_full(err):
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
