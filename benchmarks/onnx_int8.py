"""ONNX Runtime's own post-training static quantization, the baseline ``--quantize`` is
compared with: in speed (``bench_inference``) and in agreement with fp32
(``quantization_study``).

Its strongest int8 setting for these networks: ``quantize_static`` after
``quant_pre_process`` (shape inference and graph clean-up), QDQ format, int8 weights per
output channel, uint8 activations per tensor, calibrated on the same images as ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

ORT_METHODS = ("MinMax", "Percentile", "Entropy")


def quantize_onnx(
    fp32_path: Path, out_path: Path, input_name: str, calibration: Iterable[np.ndarray], method: str
) -> None:
    """Write ONNX Runtime's int8 QDQ model of ``fp32_path`` to ``out_path``, calibrated on
    ``calibration`` (one float32 array per image, batch axis included) with ``method``."""
    from onnxruntime import quantization as q

    prepared = out_path.with_name(f"{out_path.stem}-prepared.onnx")
    q.quant_pre_process(str(fp32_path), str(prepared))

    class Reader(q.CalibrationDataReader):
        """The calibration images, one at a time, as ONNX Runtime asks for them."""

        def __init__(self):
            self.images = iter(calibration)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {input_name: np.ascontiguousarray(image)}

    try:
        q.quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=getattr(q.CalibrationMethod, method),
        )
    finally:
        prepared.unlink(missing_ok=True)


def cpu_session(path_or_bytes, threads: int | None = None):
    """An ONNX Runtime CPU session; ``threads`` intra-op threads (default: its own choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
