"""Readable PyTorch versions of MLPerf's ResNet-50 v1.5 and MobileNet-v1."""

from __future__ import annotations

from torch import nn

from .mobilenet_v1 import MobileNetV1
from .resnet import ResNet50

__all__ = ["MobileNetV1", "ResNet50", "apply_bn_eps"]


def apply_bn_eps(model: nn.Module, bn_eps_per_layer: dict[str, float]) -> None:
    """Set the epsilon of individual batch-norm modules, named as in ``named_modules``."""
    modules = dict(model.named_modules())
    for name, eps in bn_eps_per_layer.items():
        module = modules.get(name)
        if not isinstance(module, nn.BatchNorm2d):
            raise ValueError(f"{name!r} is not a batch-norm layer of {type(model).__name__}")
        module.eps = float(eps)
