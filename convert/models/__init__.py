"""Readable PyTorch versions of MLPerf's ResNet-50 v1.5 and MobileNet-v1."""

from __future__ import annotations

from torch import nn

from .mobilenet_v1 import MobileNetV1
from .padding import MaxPool2dSame, TFSamePad2d, tf_same_pads
from .resnet import Bottleneck, ResNet50

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "resnet50": ResNet50,
    "mobilenet_v1": MobileNetV1,
}

__all__ = [
    "Bottleneck",
    "MaxPool2dSame",
    "MobileNetV1",
    "MODEL_CLASSES",
    "ResNet50",
    "TFSamePad2d",
    "apply_bn_eps",
    "build_model",
    "tf_same_pads",
]


def apply_bn_eps(model: nn.Module, bn_eps_per_layer: dict[str, float]) -> None:
    """Set the epsilon of individual batch-norm modules, named as in ``named_modules``."""
    modules = dict(model.named_modules())
    for name, eps in bn_eps_per_layer.items():
        module = modules.get(name)
        if not isinstance(module, nn.BatchNorm2d):
            raise ValueError(f"{name!r} is not a batch-norm layer of {type(model).__name__}")
        module.eps = float(eps)


def build_model(
    model_name: str,
    *,
    num_classes: int = 1001,
    bn_eps: float | None = None,
    bn_eps_per_layer: dict[str, float] | None = None,
) -> nn.Module:
    """Build an untrained model by name; ``bn_eps_per_layer`` overrides single layers."""
    try:
        cls = MODEL_CLASSES[model_name]
    except KeyError:
        known = ", ".join(MODEL_CLASSES)
        raise ValueError(f"unknown model {model_name!r}: expected one of {known}") from None
    kwargs = {"num_classes": num_classes}
    if bn_eps is not None:
        kwargs["bn_eps"] = bn_eps
    model = cls(**kwargs)
    if bn_eps_per_layer:
        apply_bn_eps(model, bn_eps_per_layer)
    return model
