"""The quantized network in float32: batch norm folded, fake quantization switchable.

``architectures.build_simulated`` turns a converted ``MobileNetV1`` or ``ResNet50`` into a
``SimNet`` (its blocks from the model's row, batch norm folded by ``folding.py``), whose
blocks keep the fp32 names (``features.3.depthwise``, ``layer2.1`` ...). With
quantization off it computes the fp32 model (batch norm folded, maybe equalized); with it
on, weights are fake-quantized per output channel and every activation per tensor, with
round-half-to-even and clamping like the int8 kernels. Calibration, cross-layer
equalization and bias correction all work on this module; the int8 back end is built from
its final weights and scales (``onednn.py``), so both back ends share one set of scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convert.models.padding import tf_same_pads

from .architecture import Architecture, Parts
from .observers import HistogramObserver, activation_qparams


def fake_quantize(x: torch.Tensor, scale: float, zero_point: int, qmax: int) -> torch.Tensor:
    """Quantize to codes in [0, qmax] and back, exactly as the int8 path (de)quantizes."""
    return (torch.round(x / scale) + zero_point).clamp_(0, qmax).sub_(zero_point).mul_(scale)


def quantize_codes(x: torch.Tensor, scale: float, zero_point: int, qmax: int) -> torch.Tensor:
    """The integer codes of ``fake_quantize`` (float tensor)."""
    return (torch.round(x / scale) + zero_point).clamp_(0, qmax)


class ActQuant(nn.Module):
    """A per-tensor activation quantizer: observes during calibration, fake-quantizes after.

    ``scale``/``zero_point``/``bits`` are set by calibration; an unsigned range (after a
    ReLU) gets zero point 0. ``shift`` is added before quantizing: MobileNet's input uses
    half a step, which makes its codes the pixel values themselves (``exact_pixel_input``).
    """

    def __init__(self):
        super().__init__()
        self.scale, self.zero_point, self.bits = 1.0, 0, 8
        self.shift = 0.0
        self.quantized = False
        self.observer: HistogramObserver | None = None
        self.observing: str | None = None  # "minmax" or "histogram" while calibrating
        self.range: tuple[float, float] | None = None

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def set_range(self, lo: float, hi: float, bits: int) -> None:
        self.bits = bits
        self.scale, self.zero_point = activation_qparams(lo, hi, bits)
        self.range = (self.zero_point * -self.scale, (self.qmax - self.zero_point) * self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing == "minmax":
            self.observer.observe_minmax(x)
        elif self.observing == "histogram":
            self.observer.observe_histogram(x)
        if not self.quantized:
            return x
        return fake_quantize(
            x + self.shift if self.shift else x, self.scale, self.zero_point, self.qmax
        )

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}, bits={self.bits}"


class QuantLayer(nn.Module):
    """Weights/bias shared by the conv and linear layers: fp32 copies and quantized ones."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, act: str):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())  # the fp32 bias
        self.register_buffer("bias_q", self.bias.clone())  # after bias correction
        self.register_buffer("weight_q", self.weight.clone())  # fake-quantized weight
        self.register_buffer("weight_scale", torch.ones(weight.shape[0]))
        channels = weight.shape[0]
        # ReLU6 after equalization clips channel i at 6 / s_i: one clip per channel.
        self.register_buffer("clip", torch.full((channels,), 6.0) if act == "relu6" else None)
        self.act = act
        self.weight_bits = 8
        self.quantized = False
        self.tapping = False  # bias correction: sum the pre-activations per channel
        self.tap_sum: torch.Tensor | None = None
        self.tap_count = 0
        self.out_quant: ActQuant | None = None

    def quantize_weight(self, bits: int, mse_clip: bool) -> dict:
        """Symmetric per-output-channel weights; ``mse_clip`` searches each channel's clip."""
        self.weight_bits = bits
        qmax = 2 ** (bits - 1) - 1
        flat = self.weight.reshape(self.weight.shape[0], -1).double()
        maxabs = flat.abs().amax(dim=1).clamp_min(1e-12)
        clip = maxabs.clone()
        if mse_clip:
            best = torch.full_like(maxabs, float("inf"))
            for fraction in torch.linspace(0.3, 1.0, 71, dtype=torch.float64):
                candidate = maxabs * fraction
                scale = (candidate / qmax)[:, None]
                error = ((torch.round(flat / scale).clamp(-qmax, qmax) * scale - flat) ** 2).sum(1)
                better = error < best
                best = torch.where(better, error, best)
                clip = torch.where(better, candidate, clip)
        scale = (clip / qmax).float()
        self.weight_scale = scale
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        codes = torch.round(self.weight / scale.view(shape)).clamp_(-qmax, qmax)
        self.weight_q = codes * scale.view(shape)
        return {"clipped_share": float((clip < maxabs).double().mean())}

    def weight_codes(self) -> torch.Tensor:
        """The integer codes of ``weight_q`` (nearest or learned rounding alike)."""
        qmax = 2 ** (self.weight_bits - 1) - 1
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        return torch.round(self.weight_q / self.weight_scale.view(shape)).clamp_(-qmax, qmax)

    def _tap(self, z: torch.Tensor) -> None:
        dims = [0] + list(range(2, z.dim()))
        sums = z.detach().double().sum(dim=dims)
        self.tap_sum = sums if self.tap_sum is None else self.tap_sum + sums
        self.tap_count += z.numel() // z.shape[1]

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        if self.tapping:
            self._tap(z)
        if self.act == "relu":
            z = F.relu(z)
        elif self.act == "relu6":
            shape = (1, -1) + (1,) * (z.dim() - 2)
            z = torch.minimum(F.relu(z), self.clip.view(shape))
        return z if self.out_quant is None else self.out_quant(z)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.quantized:
            return self.weight_q, self.bias_q
        return self.weight, self.bias


class SimConv(QuantLayer):
    """Conv (batch norm folded) + activation (+ output quantizer). ``padding`` is an int,
    or "same" for TF-SAME padding computed from the input size."""

    def __init__(self, weight, bias, stride, padding, groups, act, out_quant: bool = True):
        super().__init__(weight, bias, act)
        self.stride, self.padding, self.groups = stride, padding, groups
        self.out_quant = ActQuant() if out_quant else None

    def same_pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) TF-SAME pads for ``x``."""
        kernel = self.weight.shape[-1]
        top, bottom = tf_same_pads(x.shape[-2], kernel, self.stride)
        left, right = tf_same_pads(x.shape[-1], kernel, self.stride)
        return left, right, top, bottom

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.params()
        padding = self.padding
        if padding == "same":
            left, right, top, bottom = self.same_pads(x)
            if left == right and top == bottom:
                padding = (top, left)
            else:
                x, padding = F.pad(x, (left, right, top, bottom)), 0
        return F.conv2d(x, weight, bias, self.stride, padding, 1, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(self.preactivation(x))

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, "
            f"kernel={self.weight.shape[-1]}, stride={self.stride}, padding={self.padding}, "
            f"groups={self.groups}, act={self.act}"
        )


class SimLinear(QuantLayer):
    """Linear layer; float32 out (the logits)."""

    def __init__(self, weight, bias):
        super().__init__(weight, bias, "none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.params()
        return self._activate(F.linear(x, weight, bias))


class SimSeparable(nn.Module):
    def __init__(self, depthwise: SimConv, pointwise: SimConv):
        super().__init__()
        self.depthwise, self.pointwise = depthwise, pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SimBottleneck(nn.Module):
    """conv1 -> conv2 -> conv3, plus the (downsampled) input, ReLU, one output quantizer."""

    def __init__(self, conv1, conv2, conv3, downsample):
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.downsample = conv1, conv2, conv3, downsample
        self.out_quant = ActQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.out_quant(F.relu(out + identity))


class SimMaxPool(nn.Module):
    """TF-SAME max pool (pads with -inf); commutes with monotone quantization."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_pads(x.shape[-2], self.kernel, self.stride)
        left, right = tf_same_pads(x.shape[-1], self.kernel, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class SimAvgPool(nn.Module):
    """Average pool, then a new per-tensor quantizer (the head's input). ``kernel`` None:
    global average, flattened to [N, C]."""

    def __init__(self, kernel: int | None):
        super().__init__()
        self.kernel = kernel
        self.out_quant = ActQuant()

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.avg_pool2d(x, self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_quant(self.pool(x))


class SimNet(nn.Module):
    """Input quantizer, then the stages in order; logits [N, classes] in float32.

    ``architecture`` is the model's row (``architectures.py``): it names the stages."""

    def __init__(self, architecture: Architecture, parts: Parts):
        super().__init__()
        self.architecture = architecture
        self.input_quant = ActQuant()
        for name, part in parts:
            self.add_module(name, part)

    def stage_names(self) -> list[str]:
        """Names of the modules run one after the other (each one's output feeds the next)."""
        return ["input_quant", *self.architecture.stage_names(self)]

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(name, self.get_submodule(name)) for name in self.stage_names()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, stage in self.stages():
            x = stage(x)
        return torch.flatten(x, 1)

    def layers(self) -> list[tuple[str, QuantLayer]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, QuantLayer)]

    def act_quants(self) -> list[tuple[str, ActQuant]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, ActQuant)]


def set_quantized(module: nn.Module, enabled: bool) -> None:
    """Switch fake quantization of weights and activations on or off under ``module``."""
    for layer in module.modules():
        if isinstance(layer, (ActQuant, QuantLayer)):
            layer.quantized = enabled
