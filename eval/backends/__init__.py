"""Inference backends, one file each: ``backend_torch`` (a converted module, CPU or CUDA)
and ``backend_tf`` (the original frozen graph, the reference), behind ``base.Backend``;
``build.make_backend`` builds the one a run's settings name.
"""

from eval.backends.backend_tf import TFBackend
from eval.backends.backend_torch import TorchBackend
from eval.backends.base import Backend, check_logits_shape
from eval.backends.build import check_model_inputs, make_backend
from eval.backends.devices import resolve_torch_device

__all__ = [
    "Backend",
    "TFBackend",
    "TorchBackend",
    "check_logits_shape",
    "check_model_inputs",
    "make_backend",
    "resolve_torch_device",
]
