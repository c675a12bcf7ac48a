"""The architecture table: one ``Architecture`` row per converted model, and the lookups.

The generic steps (stages, equalization, calibration, the int8 back end, the layer
report) ask a model's row rather than test its type; a new model is a new row.
"""

from __future__ import annotations

from torch import nn

from convert.models.mobilenet_v1 import MobileNetV1
from convert.models.resnet import ResNet50
from core.errors import UserError

from . import mobilenet_v1, resnet50
from .architecture import Architecture
from .simulated import SimNet

MOBILENET_V1 = Architecture(
    name="mobilenet_v1",
    model_class=MobileNetV1,
    simulated_parts=mobilenet_v1.simulated_parts,
    int8_parts=mobilenet_v1.int8_parts,
    stage_names=mobilenet_v1.stage_names,
    equalization_pairs=mobilenet_v1.equalization_pairs,
    report_points=mobilenet_v1.report_points,
    exact_pixel_input=True,
)

RESNET50 = Architecture(
    name="resnet50",
    model_class=ResNet50,
    simulated_parts=resnet50.simulated_parts,
    int8_parts=resnet50.int8_parts,
    stage_names=resnet50.stage_names,
    equalization_pairs=resnet50.equalization_pairs,
    report_points=resnet50.report_points,
    exact_pixel_input=False,  # its input is mean-subtracted pixels, not p / 127.5 - 1
)

ARCHITECTURES: tuple[Architecture, ...] = (MOBILENET_V1, RESNET50)


def find_architecture(model: nn.Module) -> Architecture | None:
    """The row of an fp32 model, or the row a SimNet/Int8Net holds; None for any other."""
    own = getattr(model, "architecture", None)
    if isinstance(own, Architecture):
        return own
    return next((row for row in ARCHITECTURES if isinstance(model, row.model_class)), None)


def architecture_of(model: nn.Module) -> Architecture:
    """``find_architecture``, or a UserError naming the modules --quantize supports."""
    architecture = find_architecture(model)
    if architecture is None:
        supported = " and ".join(row.model_class.__name__ for row in ARCHITECTURES)
        raise UserError(
            f"--quantize supports the converted {supported} modules, not {type(model).__name__}"
        )
    return architecture


def build_simulated(model: nn.Module) -> SimNet:
    """A ``SimNet`` computing ``model`` (quantization off), batch norm folded."""
    architecture = architecture_of(model)
    return SimNet(architecture, architecture.simulated_parts(model))
