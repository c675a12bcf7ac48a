"""ONNX Runtime's quantize_static, the baseline int8 rows and the quantization study use."""

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.onnx_int8 import ORT_METHODS, cpu_session, quantize_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def tiny_onnx(path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 5))
    torch.onnx.export(
        net.eval(), (torch.randn(1, 3, 8, 8),), path, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}}, opset_version=17,
        dynamo=False,
    )  # fmt: skip
    return net


@pytest.mark.parametrize("method", ORT_METHODS)
def test_quantized_model_is_qdq_with_per_channel_weights_and_tracks_fp32(tmp_path, method):
    net = tiny_onnx(tmp_path / "fp32.onnx")
    images = [np.random.default_rng(i).standard_normal((1, 3, 8, 8), np.float32) for i in range(8)]
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", "input", images, method)
    graph = onnx.load(tmp_path / "int8.onnx").graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weight_scales = [list(i.dims) for i in graph.initializer if "weight_scale" in i.name]
    assert [8] in weight_scales  # the convolution's: one scale per output channel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]
    batch = np.concatenate(images)
    int8 = cpu_session(tmp_path / "int8.onnx", threads=1).run(None, {"input": batch})[0]
    with torch.inference_mode():
        fp32 = net(torch.from_numpy(batch)).numpy()
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max()
