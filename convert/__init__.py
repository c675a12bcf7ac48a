"""Stage 2: MLPerf frozen TF graphs -> readable PyTorch models, verified against TF.

Public API::

    build_model(model_name, **hyper) -> nn.Module            # untrained ResNet50 / MobileNetV1
    convert_checkpoint(model_name, checkpoint, out, *, verify_images=None, verify_cache=None,
                       report=None, verify=True, quiet=False, verify_limit=32,
                       wait=False) -> ConversionRecord
    load_checkpoint(path, *, expected_model=None) -> (nn.Module, record)  # eval mode, from
                                                  # the .pth alone
    load_model(path) -> nn.Module                 # the same without the record
    convert.tf_runner.TFGraphRunner(checkpoint_path, profile)  # the original graph in TF
    convert.safety.check_graph_ops(graph_def, outputs)       # refuses non-tensor ops

TensorFlow is imported only when a graph is read or run, never by ``import convert``.
"""

from .api import ConversionRecord, convert_checkpoint, load_checkpoint, load_model, sidecar_path
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
    "sidecar_path",
]
