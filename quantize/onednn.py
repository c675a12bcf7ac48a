"""The int8 back end: oneDNN's int8 convolutions and linear layers on plain uint8/int8
tensors (``torch.ops.onednn.qconv_pointwise`` and friends), built from a calibrated
``SimNet`` so that it uses exactly the simulated model's weights, biases and scales.

Activations travel as uint8 channels-last tensors with a per-tensor scale and zero point;
weights are int8, per output channel, prepacked once. Every module is read-only in
``forward``, so threads may share one model.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from convert.models.padding import tf_same_pads
from core.errors import UserError

from .simulated import ActQuant, SimAvgPool, SimConv, SimLinear, SimNet, quantize_codes

CPU_ONLY = (
    "--quantize int8 runs on the CPU (oneDNN int8 kernels); on CUDA use a simulated scheme "
    "such as w8a8"
)


class QParams:
    """Scale and zero point of one uint8 activation tensor."""

    def __init__(self, quant: ActQuant):
        if quant.bits != 8:
            raise ValueError("the int8 back end needs 8-bit activations")
        self.scale, self.zero_point, self.shift = quant.scale, quant.zero_point, quant.shift

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return (q.float() - self.zero_point) * self.scale

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() + self.shift if self.shift else x.float()
        codes = quantize_codes(x, self.scale, self.zero_point, 255)
        return codes.to(torch.uint8)


class _Dequantizes(nn.Module):
    """A module whose output is uint8 with ``self.out``'s scale and zero point."""

    out: QParams

    def dequantize(self, output: torch.Tensor) -> torch.Tensor:
        return self.out.dequantize(output)


class Int8Input(_Dequantizes):
    """float32 NCHW (any memory format) -> uint8 channels-last."""

    def __init__(self, quant: ActQuant):
        super().__init__()
        self.out = QParams(quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise UserError(CPU_ONLY)
        return self.out.quantize(x).contiguous(memory_format=torch.channels_last)


class Int8Conv(_Dequantizes):
    """uint8 in -> conv + bias + ReLU/ReLU6/none -> uint8 (or float32 when ``out`` None)."""

    def __init__(self, sim: SimConv, inp: QParams, out: QParams | None, accumulate=False):
        super().__init__()
        self.inp, self.out = inp, out
        self.stride, self.groups, self.same = sim.stride, sim.groups, sim.padding == "same"
        self.kernel = sim.weight.shape[-1]
        self.padding = 0 if self.same else sim.padding
        codes = sim.weight_codes().to(torch.int8).contiguous()
        self.register_buffer("w_scale", sim.weight_scale.float().contiguous())
        self.register_buffer("w_zero_point", torch.zeros(codes.shape[0], dtype=torch.int64))
        self.register_buffer("bias", sim.bias_q.float().contiguous())
        self.codes = codes
        # oneDNN picks its weight layout for an input shape: one prepacked copy per shape
        # met (opaque tensors: plain attributes, not buffers that .to() would move)
        self._packed: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.register_buffer("clip_codes", None)
        self.act = sim.act
        if sim.act == "relu":
            self.attr, self.scalars = "relu", []
        elif sim.act == "relu6":
            clip = sim.clip.float()
            codes_at = torch.round(clip / out.scale) + out.zero_point
            if bool((codes_at >= 255).all()):
                self.attr, self.scalars = "relu", []  # the uint8 range clips first
            elif bool((clip == clip[0]).all()):
                self.attr, self.scalars = "hardtanh", [0.0, float(clip[0])]
            else:  # per-channel ReLU6 clip after equalization: a min on the codes
                self.attr, self.scalars = "relu", []
                self.clip_codes = codes_at.clamp(0, 255).to(torch.uint8).view(1, -1, 1, 1)
        else:
            self.attr, self.scalars = "none", []

    def _pad(self, q: torch.Tensor) -> tuple[torch.Tensor, int]:
        if not self.same:
            return q, self.padding
        top, bottom = tf_same_pads(q.shape[-2], self.kernel, self.stride)
        left, right = tf_same_pads(q.shape[-1], self.kernel, self.stride)
        if top == bottom and left == right and top == left:
            return q, top
        # pad with the zero point: the padded values are real zeros, as in TF
        padded = F.pad(q, (left, right, top, bottom), value=self.inp.zero_point)
        return padded.contiguous(memory_format=torch.channels_last), 0

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["_packed"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    def packed(self, q: torch.Tensor, padding: int) -> torch.Tensor:
        key = (tuple(q.shape), padding)
        packed = self._packed.get(key)
        if packed is None:
            with self._lock:
                packed = self._packed.get(key)
                if packed is None:
                    packed = torch.ops.onednn.qconv_prepack(
                        self.codes, self.w_scale, self.inp.scale, self.inp.zero_point,
                        [self.stride] * 2, [padding] * 2, [1, 1], self.groups, list(q.shape),
                    )  # fmt: skip
                    self._packed[key] = packed
        return packed

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        q, padding = self._pad(q)
        out_scale, out_zp, out_dtype = (
            (1.0, 0, torch.float32)
            if self.out is None
            else (self.out.scale, self.out.zero_point, None)
        )
        y = torch.ops.onednn.qconv_pointwise(
            q,
            self.inp.scale,
            self.inp.zero_point,
            self.packed(q, padding),
            self.w_scale,
            self.w_zero_point,
            self.bias,
            [self.stride] * 2,
            [padding] * 2,
            [1, 1],
            self.groups,
            out_scale,
            out_zp,
            out_dtype,
            self.attr,
            self.scalars,
            None,
        )
        if self.clip_codes is not None:
            y = torch.minimum(y, self.clip_codes)
        return y

    def forward_add_relu(self, q: torch.Tensor, accum: torch.Tensor, acc: QParams):
        """conv + bias + dequantized ``accum``, ReLU, quantized to ``self.out``: one kernel."""
        return torch.ops.onednn.qconv2d_pointwise.binary(
            q,
            self.inp.scale,
            self.inp.zero_point,
            self.packed(q, self.padding),
            self.w_scale,
            self.w_zero_point,
            accum,
            self.bias,
            [self.stride] * 2,
            [self.padding] * 2,
            [1, 1],
            self.groups,
            self.out.scale,
            self.out.zero_point,
            None,
            acc.scale,
            acc.zero_point,
            "sum",
            1.0,
            "relu",
            [],
            None,
        )

    def dequantize(self, output: torch.Tensor) -> torch.Tensor:
        return output if self.out is None else self.out.dequantize(output)


class Int8Linear(nn.Module):
    """uint8 [N, C] in -> float32 logits."""

    def __init__(self, sim: SimLinear, inp: QParams):
        super().__init__()
        self.inp = inp
        codes = sim.weight_codes().to(torch.int8).contiguous()
        self.register_buffer("w_scale", sim.weight_scale.float().contiguous())
        self.register_buffer("w_zero_point", torch.zeros(codes.shape[0], dtype=torch.int64))
        self.register_buffer("bias", sim.bias_q.float().contiguous())
        self.codes = codes
        self.packed = torch.ops.onednn.qlinear_prepack(codes, None)

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["packed"] = None  # opaque: packed again from the codes
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.packed = torch.ops.onednn.qlinear_prepack(self.codes, None)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(
            q,
            self.inp.scale,
            self.inp.zero_point,
            self.packed,
            self.w_scale,
            self.w_zero_point,
            self.bias,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )


class Int8Separable(nn.Module):
    def __init__(self, depthwise: Int8Conv, pointwise: Int8Conv):
        super().__init__()
        self.depthwise, self.pointwise = depthwise, pointwise

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(q))


class Int8Bottleneck(_Dequantizes):
    """conv1 -> conv2 -> conv3 fused with the shortcut add and ReLU (``.binary``)."""

    def __init__(self, sim, inp: QParams):
        super().__init__()
        self.out = QParams(sim.out_quant)
        self.conv1 = Int8Conv(sim.conv1, inp, QParams(sim.conv1.out_quant))
        self.conv2 = Int8Conv(sim.conv2, self.conv1.out, QParams(sim.conv2.out_quant))
        self.conv3 = Int8Conv(sim.conv3, self.conv2.out, self.out)
        self.downsample = None
        self.identity = inp
        if sim.downsample is not None:
            self.downsample = Int8Conv(sim.downsample, inp, QParams(sim.downsample.out_quant))
            self.identity = self.downsample.out

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        identity = q if self.downsample is None else self.downsample(q)
        out = self.conv2(self.conv1(q))
        # the kernel may write into the accumulator: never hand it the caller's tensor
        accum = identity.clone() if self.downsample is None else identity
        return self.conv3.forward_add_relu(out, accum, self.identity)


class Int8MaxPool(_Dequantizes):
    """TF-SAME max pool on the codes (monotone quantization commutes with max); pads with
    code 0, never above a real value, like TF's -inf."""

    def __init__(self, kernel: int, stride: int, inp: QParams):
        super().__init__()
        self.kernel, self.stride, self.out = kernel, stride, inp

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_pads(q.shape[-2], self.kernel, self.stride)
        left, right = tf_same_pads(q.shape[-1], self.kernel, self.stride)
        q = F.pad(q, (left, right, top, bottom), value=0)
        # torch's uint8 max_pool2d fails on channels-last: the max of the strided windows
        rows = (q.shape[-2] - self.kernel) // self.stride + 1
        cols = (q.shape[-1] - self.kernel) // self.stride + 1
        out = None
        for i in range(self.kernel):
            for j in range(self.kernel):
                window = q[
                    :,
                    :,
                    i : i + self.stride * (rows - 1) + 1 : self.stride,
                    j : j + self.stride * (cols - 1) + 1 : self.stride,
                ]
                out = window if out is None else torch.maximum(out, window)
        return out


class Int8AvgPool(_Dequantizes):
    """Dequantize, average in float32, quantize again for the head (as SimAvgPool)."""

    def __init__(self, sim: SimAvgPool, inp: QParams):
        super().__init__()
        self.kernel, self.inp, self.out = sim.kernel, inp, QParams(sim.out_quant)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        x = self.inp.dequantize(q)
        if self.kernel is None:
            pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        else:
            pooled = F.avg_pool2d(x, self.kernel)
        return self.out.quantize(pooled)


class Int8Net(nn.Module):
    """The int8 model: float32 NCHW in, float32 logits [N, classes] out, CPU only.

    Its blocks, named as the SimNet's, come from the model's row (``int8_parts``)."""

    def __init__(self, sim: SimNet):
        super().__init__()
        self.architecture = sim.architecture
        self.input_quant = Int8Input(sim.input_quant)
        parts = sim.architecture.int8_parts(sim, self.input_quant.out)
        for name, part in parts:
            self.add_module(name, part)
        self._order = ["input_quant", *(name for name, _ in parts)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)

    def _apply(self, fn, recurse=True):
        # prepacked oneDNN weights live on the CPU: refuse a move elsewhere, one sentence
        probe = fn(torch.zeros(()))
        if probe.device.type != "cpu":
            raise UserError(CPU_ONLY)
        return super()._apply(fn, recurse)
