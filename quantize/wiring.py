"""Which activation quantizer feeds each layer of a ``SimNet`` (found by running it once),
and the widths of a network's layers and quantizers under a scheme and ``--layer-bits``.

A layer's activation width (``aY`` of its ``wXaY``) is the width of the quantizer whose
output it reads. One forward pass of a small image records which quantizer produced each
tensor (a max pool passes its input's quantizer on: it commutes with quantization), and
which tensor each layer read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layer_bits import Bits, explicit_layers, resolve_layer_bits, weight_bits_mean
from .scheme import QuantScheme
from .simulated import ActQuant, QuantLayer, SimMaxPool, SimNet

PROBE_SIZE = 224  # pixels: the models' own size (MobileNet pools a fixed 7x7)


def input_quantizers(net: SimNet) -> dict[str, str]:
    """``{layer name: name of the ActQuant it reads}``; layers reading something else
    (none in the two models) are left out."""
    produced: dict[int, str] = {}
    read: dict[str, int] = {}
    keep: list[torch.Tensor] = []  # ids stay unique while the tensors live
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, ActQuant):
            handles.append(module.register_forward_hook(_record_output(produced, keep, name)))
        elif isinstance(module, SimMaxPool):
            handles.append(module.register_forward_hook(_pass_on(produced, keep)))
        elif isinstance(module, QuantLayer):
            handles.append(module.register_forward_pre_hook(_record_input(read, keep, name)))
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
    finally:
        for handle in handles:
            handle.remove()
    return {layer: produced[tensor] for layer, tensor in read.items() if tensor in produced}


def _record_output(produced: dict, keep: list, name: str):
    def hook(_module, _inputs, output):
        keep.append(output)
        produced[id(output)] = name

    return hook


def _pass_on(produced: dict, keep: list):
    def hook(_module, inputs, output):
        keep.append(output)
        if id(inputs[0]) in produced:
            produced[id(output)] = produced[id(inputs[0])]

    return hook


def _record_input(read: dict, keep: list, name: str):
    def hook(_module, inputs):
        keep.append(inputs[0])
        read[name] = id(inputs[0])

    return hook


@dataclass
class Widths:
    """Every layer's (weight, activation) bits in forward order, each activation
    quantizer's bits, and each layer's parameter count (the weights' mean is by it)."""

    layers: dict[str, Bits]
    quantizers: dict[str, int]
    parameters: dict[str, int]
    scheme: QuantScheme | None = None  # the scheme the widths were planned under

    @property
    def weight_bits_mean(self) -> float:
        return weight_bits_mean(self.layers, self.parameters)

    def weight_bits(self) -> dict[str, int]:
        return {name: bits[0] for name, bits in self.layers.items()}


def plan_widths(net: SimNet, scheme: QuantScheme, spec: dict[str, str] | None) -> Widths:
    """The widths of ``net`` under ``scheme`` and a ``--layer-bits`` SPEC.

    A quantizer takes the widest activation width among the layers reading it (the
    scheme's where none does, as before a pool). The network input is the image's 8 bits
    (or the scheme's, if wider) unless SPEC names the first layer: a scheme's activation
    width is for what the network computes."""
    readers = input_quantizers(net)
    modules = dict(net.layers())
    order = list(readers) + [name for name in modules if name not in readers]
    layers = resolve_layer_bits(spec, order, scheme)
    quantizers = {name: scheme.activation_bits for name, _ in net.act_quants()}
    read_by: dict[str, int] = {}
    for layer, quant in readers.items():
        read_by[quant] = max(read_by.get(quant, 0), layers[layer][1])
    quantizers.update(read_by)
    if order[0] not in explicit_layers(spec, order):
        quantizers["input_quant"] = max(8, scheme.activation_bits)
    parameters = {name: modules[name].weight.numel() for name in order}
    return Widths(layers, quantizers, parameters, scheme)
