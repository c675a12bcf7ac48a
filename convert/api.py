"""``convert_checkpoint`` (graph -> verified .pth + JSON sidecar) and ``load_model``."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from core.files import atomic_path, sha256_file, write_text_atomic
from core.profiles import get_profile

from .models import build_model

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "mlperf-port.convert/1"


def sidecar_path(out: str | os.PathLike) -> Path:
    """``model.pth`` -> ``model.json``: the conversion record that travels with the weights."""
    return Path(out).with_suffix(".json")


def _check_model_name(model: str) -> None:
    get_profile(model)


def convert_checkpoint(
    model: str,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    verify_images: str | os.PathLike | None = None,
    verify_cache: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    verify: bool = True,
    quiet: bool = False,
    verify_limit: int | None = 32,
) -> dict[str, Any]:
    """Convert an MLPerf frozen graph to a PyTorch state_dict ``out`` plus ``out``'s sidecar.

    Verification against TF runs by default; when it fails, UserError is raised and no
    ``.pth`` is written. Returns the summary that the sidecar also records.
    """
    from .graph import read_graph_def
    from .weights import extract_weights

    started = time.perf_counter()
    _check_model_name(model)
    profile = get_profile(model)
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix != ".pth":
        raise UserError(f"output {out} must end in .pth (its sidecar goes to the .json beside it)")
    graph_def = read_graph_def(checkpoint, profile.archive_member)
    extracted = extract_weights(graph_def, model, source=checkpoint.name)
    torch_model = build_model(model, **extracted.hyperparameters)
    torch_model.load_state_dict(extracted.state_dict, strict=True)
    torch_model.eval()
    log.info(
        "read %d tensors from %s (%s, batch norm %s)",
        len(extracted.used_tensors),
        checkpoint.name,
        extracted.data_format,
        extracted.bn_form,
    )

    verification = None
    if verify:
        verification = _verify(
            torch_model,
            checkpoint,
            graph_def,
            extracted,
            model,
            verify_images,
            verify_cache,
            verify_limit,
            quiet,
        )

    summary: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "model": model,
        "source": {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
        "hyperparameters": extracted.hyperparameters,
        "epsilons": {
            name: m.eps for name, m in torch_model.named_modules() if isinstance(m, nn.BatchNorm2d)
        },
        "graph": {
            "data_format": extracted.data_format,
            "batch_norm": extracted.bn_form,
            "input_tensor": extracted.input_tensor,
            "logits_tensor": extracted.logits_tensor,
        },
        "verification": verification.summary() if verification else None,
        "ignored_tensors": extracted.ignored_tensors,
    }
    sidecar = sidecar_path(out)
    with atomic_path(out) as tmp_pth, atomic_path(sidecar) as tmp_json:
        torch.save(torch_model.state_dict(), tmp_pth)
        summary["state_dict"] = {"file": out.name, "sha256": sha256_file(tmp_pth)}
        summary["seconds"] = round(time.perf_counter() - started, 2)
        tmp_json.write_text(json.dumps(summary, indent=2) + "\n")
    if report is not None:
        full = {
            **summary,
            "verification": verification.to_dict() if verification else None,
            "tensors": extracted.source_names,
        }
        write_text_atomic(report, json.dumps(full, indent=2) + "\n")
    log.info("wrote %s and %s in %.1f s", out, sidecar, summary["seconds"])
    return {
        **summary,
        "out": str(out),
        "sidecar": str(sidecar),
        "report": str(report) if report else None,
    }


def _verify(
    torch_model, checkpoint, graph_def, extracted, model, verify_images, verify_cache, limit, quiet
):
    from .tf_runner import TFGraphRunner
    from .verify import compare_layers, verification_images

    source, names, images = verification_images(model, verify_images, verify_cache, limit)
    with TFGraphRunner(
        checkpoint,
        model,
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
        where = (
            f" (first layer over tolerance: {result.first_failing_layer})"
            if result.first_failing_layer
            else ""
        )
        raise UserError(
            f"the converted {model} does not match TensorFlow: {'; '.join(result.failures)}{where}"
        )
    return result


def load_model(model: str, path: str | os.PathLike) -> nn.Module:
    """Rebuild a converted model from ``path`` (.pth) in eval mode.

    Hyperparameters (class count, batch-norm epsilons) come from the JSON sidecar beside the
    file. Without a sidecar the model is built with MLPerf's standard values (ResNet-50
    eps 1.001e-5, MobileNet-v1 eps 1e-3, 1001 classes) and a warning is logged.
    """
    _check_model_name(model)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"converted model {path} does not exist")
    hyper: dict[str, Any] = {}
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the sidecar {sidecar} ({err})") from None
        if record.get("model") != model:
            raise UserError(f"{path} holds a {record.get('model')} model, not {model}")
        hyper = record.get("hyperparameters", {})
    else:
        log.warning("no sidecar %s: building %s with its standard hyperparameters", sidecar, model)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise UserError(f"cannot load {path} as a PyTorch state_dict ({err})") from None
    torch_model = build_model(model, **hyper)
    try:
        torch_model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path} is not a converted {model} state_dict ({first})") from None
    return torch_model.eval()
