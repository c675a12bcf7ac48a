"""``make_backend``: the backend a run's settings name, built from its model file, with a
user's method applied to the loaded module (``modify``) before any engine sees it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.profiles import ModelProfile
from eval.backends.backend_tf import TFBackend
from eval.backends.backend_torch import TorchBackend
from eval.backends.base import Backend
from eval.backends.devices import resolve_torch_device
from eval.options import BACKENDS, EvalSettings, check_choice


def make_backend(
    profile: ModelProfile,
    settings: EvalSettings,
    *,
    num_images: int | None = None,
    verify_images: np.ndarray | None = None,
    modify: Callable | None = None,
) -> Backend:
    """Build the backend ``settings`` name, with one-sentence errors for missing inputs.

    ``num_images`` and ``verify_images`` (crops a fast engine is checked on): torch only.
    ``modify``: called once with the loaded fp32 module, it returns the module to evaluate
    (a user's method, ``eval.method``); the backend knows nothing else of it.
    """
    check_model_inputs(settings)
    if settings.backend == "tf":
        return TFBackend(Path(settings.checkpoint), profile, settings.device)
    from convert.api import load_checkpoint

    weights = Path(settings.weights)
    dev = resolve_torch_device(settings.device)  # before loading: fail fast on a missing GPU
    # Refuses a damaged file or another model's in one sentence, before any evaluation work.
    module, record = load_checkpoint(weights, expected_model=profile.name)
    if modify is not None:
        module = modify(module)
    return TorchBackend(
        module,
        profile,
        str(dev),
        weights_path=weights,
        engine=settings.engine,
        batch_size=settings.resolved().batch_size,
        num_images=num_images,
        verify_images=verify_images,
        label_offset=record["label_offset"],
        precision=settings.precision,
        weights_sha256=record["file_sha256"],
    )


def check_model_inputs(settings: EvalSettings) -> None:
    """The model file the backend needs exists: checked before any output folder is made."""
    backend, weights, checkpoint = settings.backend, settings.weights, settings.checkpoint
    check_choice("backend", backend, BACKENDS)
    if backend == "torch":
        if weights is None:
            raise UserError("the torch backend needs --weights (a converted .pth file)")
        if not Path(weights).is_file():
            raise UserError(f"weights file not found: {weights}")
        return
    if settings.precision != "fp32":
        raise UserError(
            f"--precision {settings.precision} is for the torch backend on CUDA; tf runs fp32"
        )
    if checkpoint is None:
        raise UserError("the tf backend needs --checkpoint (the frozen graph .pb)")
    if not Path(checkpoint).is_file():
        raise UserError(f"checkpoint file not found: {checkpoint}")
