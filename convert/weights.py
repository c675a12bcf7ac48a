"""Frozen TF graph -> PyTorch state_dict: the entry point over the per-model walkers.

``extract_weights(graph_def, model_name)`` reads the graph (constants folded, see graph.py),
walks it as the named model (extract_resnet.py, extract_mobilenet.py, on the shared
machinery of walker.py) and returns an :class:`ExtractedWeights`: the state_dict, the
hyperparameters to build the model with, the batch-norm encoding found per layer, the
class count, and the TF tensor matching each model block for verification.
"""

from __future__ import annotations

from typing import Any

from core.profiles import get_profile

from .extract_mobilenet import extract_mobilenet_v1
from .extract_resnet import extract_resnet50
from .graph import Graph
from .walker import ConvOp, ExtractedWeights, LayerTensor

__all__ = [
    "EXTRACTORS",
    "ConvOp",
    "ExtractedWeights",
    "LayerTensor",
    "extract_mobilenet_v1",
    "extract_resnet50",
    "extract_weights",
]

EXTRACTORS = {"resnet50": extract_resnet50, "mobilenet_v1": extract_mobilenet_v1}


def extract_weights(graph_def: Any, model_name: str, source: str = "the graph") -> ExtractedWeights:
    """Walk ``graph_def`` as ``model_name`` and return its state_dict plus what was found.

    Raises UserError (one sentence naming the node, its op and what was expected there)
    when the graph is not that model.
    """
    get_profile(model_name)
    return EXTRACTORS[model_name](Graph(graph_def, source))
