"""Stage 2: MLPerf frozen TF graphs -> readable PyTorch models, verified against TF.

``convert_checkpoint`` writes one self-describing .pth; ``load_checkpoint`` (or
``load_model``) rebuilds the model from it; ``build_model`` makes an untrained one. The
original graph runs through ``convert.tf_runner.TFGraphRunner``, after
``convert.safety.check_graph_ops`` refused anything but pure tensor ops. TensorFlow is
imported only when a graph is read or run, never by ``import convert``.
"""

from .api import ConversionRecord, convert_checkpoint
from .model_file import load_checkpoint, load_model
from .models import MobileNetV1, ResNet50
from .registry import build_model

__all__ = [
    "ConversionRecord",
    "MobileNetV1",
    "ResNet50",
    "build_model",
    "convert_checkpoint",
    "load_checkpoint",
    "load_model",
]
