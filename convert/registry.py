"""What convert knows per model, in one table: the PyTorch module class and the graph walker
(extract_resnet.py, extract_mobilenet.py, on walker.py) that fills it from a frozen graph.
The facts every stage shares (tensor names, recipe, label offset) stay in ``core.profiles``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from core.profiles import MOBILENET_V1, RESNET50, ModelProfile, get_profile

from .extract_mobilenet import extract_mobilenet_v1
from .extract_resnet import extract_resnet50
from .graph import Graph
from .models import MobileNetV1, ResNet50, apply_bn_eps
from .walker import ExtractedWeights, Walker


@dataclass(frozen=True)
class ConvertibleModel:
    module_class: type[nn.Module]
    extract: Callable[[Walker], ExtractedWeights]  # walks the graph into module_class


MODELS: dict[str, ConvertibleModel] = {
    RESNET50.name: ConvertibleModel(ResNet50, extract_resnet50),
    MOBILENET_V1.name: ConvertibleModel(MobileNetV1, extract_mobilenet_v1),
}


def build_model(
    model_name: str,
    *,
    num_classes: int = 1001,
    bn_eps: float | None = None,
    bn_eps_per_layer: dict[str, float] | None = None,
) -> nn.Module:
    """Build an untrained model by name; ``bn_eps_per_layer`` overrides single layers.

    An unknown name is ``core.profiles.get_profile``'s UserError, as in every other stage.
    """
    cls = MODELS[get_profile(model_name).name].module_class
    model = cls(num_classes=num_classes, **({} if bn_eps is None else {"bn_eps": bn_eps}))
    if bn_eps_per_layer:
        apply_bn_eps(model, bn_eps_per_layer)
    return model


def extract_weights(
    graph_def: Any, profile: ModelProfile, source: str = "the graph"
) -> ExtractedWeights:
    """Walk ``graph_def`` (constants folded, see graph.py) as ``profile``'s model: its
    state_dict, the hyperparameters to build it with, the batch-norm encoding per layer, the
    class count and the TF tensor of each block for verification. A graph that is not that
    model is a UserError naming the node, its op and what was expected there.
    """
    model = MODELS[profile.name]
    return model.extract(Walker(Graph(graph_def, source), profile, model.module_class))
