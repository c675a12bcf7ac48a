"""Converted-model files made without TensorFlow: seeded weights in the project's .pth format.

For where no frozen graph can be converted (the GPU machine has no TensorFlow, and a
ResNet-50 .pth is too large to bring along) and for tests that need a real weights file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from convert.model_file import FORMAT, content_digest, load_checkpoint
from convert.registry import build_model
from core.files import atomic_path


def seeded_model(model_name: str, seed: int = 0) -> nn.Module:
    """``model_name`` (1001 classes) with ``torch.manual_seed(seed)`` initial weights."""
    torch.manual_seed(seed)
    return build_model(model_name).eval()


def calibrate_batch_norm(module: nn.Module, crops_nchw: torch.Tensor) -> nn.Module:
    """Set every batch norm's running statistics to those of ``crops_nchw`` (real crops keep
    the logits spread like a trained network's instead of collapsing); eval mode."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: one batch gives its exact statistics
    module.train()
    with torch.no_grad():
        module(crops_nchw)
    return module.eval()


def save_converted(module: nn.Module, model_name: str, path: str | os.PathLike) -> Path:
    """Write ``module`` as the file ``python -m convert`` writes and check that it loads back."""
    path = Path(path)
    num_classes = 1001
    epsilons = {
        name: float(layer.eps)
        for name, layer in module.named_modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm)
    }
    state_dict = {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}
    source = hashlib.sha256(f"seeded {model_name}".encode()).hexdigest()
    payload = {
        "format": FORMAT,
        "model_name": model_name,
        "num_classes": num_classes,
        "label_offset": num_classes - 1000,
        "bn_epsilons": epsilons,
        "bn_encoding": {},
        "source_file": f"seeded-{model_name}",
        "source_sha256": source,
        "state_dict": state_dict,
    }
    payload["content_sha256"] = content_digest(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    load_checkpoint(path)  # fails loudly if the format drifted from convert's
    return path
