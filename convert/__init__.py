"""Stage 2: MLPerf frozen TF graphs -> readable PyTorch models, verified against TF.

Public API::

    build_model(model_name, **hyper) -> nn.Module            # untrained ResNet50 / MobileNetV1
    convert_checkpoint(model, checkpoint, out, *, verify_images=None, verify_cache=None,
                       report=None, verify=True, quiet=False) -> summary dict
    load_model(model, path) -> nn.Module                     # eval mode, from .pth + sidecar
    convert.tf_runner.TFGraphRunner(checkpoint_path, model)  # the original graph in TF

TensorFlow is imported only when a graph is read or run, never by ``import convert``.
"""

from .api import convert_checkpoint, load_model, sidecar_path
from .models import MobileNetV1, ResNet50, build_model

__all__ = [
    "MobileNetV1",
    "ResNet50",
    "build_model",
    "convert_checkpoint",
    "load_model",
    "sidecar_path",
]
