"""Shared machinery of the weight walkers: follow a frozen graph's edges into a state_dict.

From the input placeholder a walker follows consumers (conv, batch norm in any encoding,
Add, pool, classifier), never node names, so a graph that differs is reported by what was
found. It checks the hyperparameters the PyTorch model hard-codes (strides, padding, data
format, kernel shapes) and records each block's TF tensor for the layer-by-layer check.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.errors import UserError
from core.profiles import ModelProfile

from .batchnorm import BatchNormParams, batch_norm_after, per_channel
from .graph import ADD_OPS, Graph, node_name
from .models.padding import tf_same_pads

log = logging.getLogger(__name__)

_RESHAPES = ("Squeeze", "Reshape")


@dataclass
class ConvOp:
    """One convolution as the graph runs it (explicit Pad folded in)."""

    node: str
    kernel: np.ndarray
    kernel_tensor: str
    stride: tuple[int, int]
    padding: str  # the conv's own "SAME"/"VALID"
    explicit_pad: tuple[tuple[int, int], tuple[int, int]] | None  # from a preceding Pad
    depthwise: bool

    @property
    def out_channels(self) -> int:
        k = self.kernel.shape
        return k[2] * k[3] if self.depthwise else k[3]


@dataclass
class LayerTensor:
    """A model block, the TF tensor holding the same activation, and its BN encoding."""

    layer: str  # display name, e.g. "layer1.0"
    module: str  # torch module path ("" = the whole model's output)
    tf_tensor: str
    encoding: str = ""  # batch-norm encoding(s) found in the block, e.g. "fused"


@dataclass
class ExtractedWeights:
    """Everything a conversion needs from the graph."""

    state_dict: dict[str, torch.Tensor]
    hyperparameters: dict[str, Any]  # registry.build_model kwargs
    data_format: str
    bn_encoding_summary: str  # the encodings found, sorted and joined by "+" (e.g. "fused")
    layer_tensors: list[LayerTensor]
    input_tensor: str
    logits_tensor: str
    used_tensors: list[str]
    ignored_tensors: list[str]
    source_names: dict[str, str] = field(default_factory=dict)  # state_dict key -> TF const
    num_classes: int = 1001  # from the classifier: 1001 with a background class, or 1000
    bn_encodings: dict[str, str] = field(default_factory=dict)  # "layer1.0.bn1" -> encoding
    bn_encoding_counts: dict[str, int] = field(default_factory=dict)  # layers per encoding
    input_layout: str = "NHWC"  # layout the graph's input placeholder takes

    @property
    def label_offset(self) -> int:
        """Index of ImageNet label 0 in the logits: 1 with a background class, else 0."""
        return self.num_classes - 1000


def spatial_axes(data_format: str) -> tuple[int, int]:
    return (2, 3) if data_format == "NCHW" else (1, 2)


class Walker:
    """Shared bookkeeping: state_dict entries with shape checks, BN encodings, data format."""

    def __init__(self, graph: Graph, profile: ModelProfile, module_class: type[torch.nn.Module]):
        self.graph, self.profile, self.module_class = graph, profile, module_class
        self.num_classes = profile.num_classes
        self.expected = module_class(num_classes=self.num_classes).state_dict()
        self.state: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}
        self.eps: dict[str, float] = {}
        self.encodings: dict[str, str] = {}
        self._block_encodings: list[str] = []
        self.data_format: str | None = None
        self.input_layout: str | None = None  # None until the input's consumers decide it
        self.layers: list[LayerTensor] = []

    @property
    def source(self) -> str:
        return self.graph.source

    # ---------------------------------------------------------------- input

    def input_node(self) -> str:
        name = node_name(self.profile.input_tensor)
        if name not in self.graph.nodes:
            placeholders = [n.name for n in self.graph.graph_def.node if n.op == "Placeholder"]
            found = ", ".join(placeholders) or "none"
            raise UserError(
                f"{self.source} has no input tensor {self.profile.input_tensor}, so it is "
                f"not a {self.profile.name} graph (its placeholders: {found})"
            )
        node = self.graph.nodes[name]
        if node.op != "Placeholder":
            raise UserError(f"{self.source}: input {name} is a {node.op}, not a Placeholder")
        return name

    def skip_layout_transpose(self, name: str) -> str:
        """Channels-first exports of an NHWC input start with a Transpose; step over it."""
        consumers = self.graph.data_consumers(name)
        if len(consumers) == 1 and consumers[0].op == "Transpose":
            transpose = consumers[0]
            perm = self.graph.input_value(transpose, 1)[0].tolist()
            if perm != [0, 3, 1, 2]:
                raise UserError(
                    f"{self.source}: input transpose {transpose.name} (Transpose) has perm "
                    f"{perm}, where [0, 3, 1, 2] (NHWC -> NCHW) was expected"
                )
            self.input_layout = "NHWC"
            return transpose.name
        return name  # input_layout stays None: the first conv's data format decides it

    # ---------------------------------------------------------------- ops

    def _check_format(self, node) -> str:
        fmt = self.graph.attr_str(node, "data_format", "NHWC")
        if fmt not in ("NHWC", "NCHW"):
            raise UserError(f"{self.source}: {node.name} ({node.op}) uses data_format {fmt}")
        if self.data_format is None:
            self.data_format = fmt
            if self.input_layout is None:
                self.input_layout = fmt
        elif fmt != self.data_format:
            raise UserError(
                f"{self.source}: {node.name} ({node.op}) computes in {fmt} but earlier layers "
                f"in {self.data_format}"
            )
        return fmt

    def spatial_pair(self, node, key: str) -> tuple[int, int]:
        """The (height, width) entries of a 4-element attribute such as strides or ksize."""
        values = self.graph.attr_ints(node, key)
        if len(values) != 4:
            raise UserError(f"{self.source}: {node.name} ({node.op}) has no 4-element {key}")
        h, w = spatial_axes(self.data_format or "NHWC")
        return values[h], values[w]

    def conv_from(self, name: str, layer: str, op: str) -> ConvOp:
        """The ``op`` conv reading ``name``'s output, possibly through an explicit Pad."""
        first = self.graph.next_op(name, ("Pad", op), f"the conv of {layer}")
        return self.conv_at(first, layer, op)

    def conv_at(self, first, layer: str, op: str) -> ConvOp:
        """The ``op`` conv at node ``first``, or after it when ``first`` is an explicit Pad."""
        node, explicit_pad = first, None
        if first.op == "Pad":
            paddings, _ = self.graph.input_value(first, 1)
            node = self.graph.next_op(first.name, (op,), f"the conv of {layer}")
        elif node.op != op:
            raise UserError(
                f"{self.source}: {node.name} ({node.op}) stands where the conv of {layer} "
                f"({op}) was expected"
            )
        h, w = spatial_axes(self._check_format(node))
        if first.op == "Pad":
            if paddings.shape != (4, 2) or any(
                paddings[i].tolist() != [0, 0] for i in range(4) if i not in (h, w)
            ):
                raise UserError(
                    f"{self.source}: {first.name} (Pad) pads {paddings.tolist()}, where only "
                    f"the spatial axes of {layer} were expected to be padded"
                )
            explicit_pad = (tuple(paddings[h].tolist()), tuple(paddings[w].tolist()))
        dilations = self.graph.attr_ints(node, "dilations")
        if dilations and any(d != 1 for d in dilations):
            raise UserError(f"{self.source}: {node.name} ({node.op}) is dilated ({dilations})")
        kernel, kernel_name = self.graph.input_value(node, 1)
        if kernel.ndim != 4:
            raise UserError(
                f"{self.source}: {node.name} ({node.op}) reads a kernel of shape "
                f"{tuple(kernel.shape)} from {kernel_name}, where a 4-d kernel was expected"
            )
        return ConvOp(
            node=node.name,
            kernel=kernel,
            kernel_tensor=kernel_name,
            stride=self.spatial_pair(node, "strides"),
            padding=self.graph.attr_str(node, "padding"),
            explicit_pad=explicit_pad,
            depthwise=node.op == "DepthwiseConv2dNative",
        )

    def check_conv(self, conv: ConvOp, layer: str, stride: int, padding: str, size=None) -> None:
        """Compare the graph's stride/padding with the model's.

        ``padding`` is what the PyTorch layer does: "symmetric" (``padding=(k-1)//2``) or
        "same" (TF SAME via TFSamePad2d). Equivalent TF forms are accepted, including an
        explicit Pad + VALID equal to SAME's pads at the layer's input ``size``.
        """
        if conv.stride != (stride, stride):
            raise UserError(
                f"{self.source}: {conv.node} ({layer}) has strides {conv.stride}, "
                f"but the model uses {stride}"
            )
        k = conv.kernel.shape[0]
        zero_pad = conv.explicit_pad in (None, ((0, 0), (0, 0)))
        if k == 1 and zero_pad:
            return  # 1x1 convs never pad, whatever the mode
        if padding == "symmetric":
            p = (k - 1) // 2
            ok = (conv.explicit_pad == ((p, k - 1 - p),) * 2 and conv.padding == "VALID") or (
                conv.explicit_pad is None and conv.padding == "SAME" and stride == 1 and k % 2
            )
        else:
            same = tf_same_pads(size, k, stride) if size else None
            ok = (conv.explicit_pad is None and conv.padding == "SAME") or (
                conv.padding == "VALID" and conv.explicit_pad == (same, same)
            )
        if not ok:
            raise UserError(
                f"{self.source}: {conv.node} ({layer}) pads {conv.explicit_pad} and runs "
                f"{conv.padding}, which the model's {padding} padding does not reproduce"
            )

    def batch_norm(self, conv: ConvOp) -> BatchNormParams:
        return batch_norm_after(self.graph, conv.node, conv.out_channels, self.data_format)

    def global_pool(self, x: str, what: str, size: int = 7):
        """The global average pool after ``x``: a Mean over H, W or a size x size AvgPool."""
        pool = self.graph.next_op(x, ("Mean", "AvgPool"), what)
        if pool.op == "Mean":
            axes = sorted(int(a) % 4 for a in np.ravel(self.graph.input_value(pool, 1)[0]))
            if axes != list(spatial_axes(self.data_format or "NHWC")):
                raise UserError(
                    f"{self.source}: {pool.name} (Mean) averages over axes {axes}, where the "
                    f"height and width axes were expected"
                )
            return pool
        ksize = self.spatial_pair(pool, "ksize")
        if ksize != (size, size) or self.graph.attr_str(pool, "padding") != "VALID":
            raise UserError(
                f"{self.source}: {pool.name} (AvgPool) is {ksize} "
                f"{self.graph.attr_str(pool, 'padding')}, where a {size}x{size} VALID "
                f"average pool was expected"
            )
        return pool

    def classifier(self, x: str, in_features: int, prefix: str, *, as_conv: bool) -> str:
        """Store the MatMul or 1x1 Conv2D (after any Squeeze/Reshape) and its bias at
        ``prefix`` as a Linear or, ``as_conv``, a 1x1 Conv2d; return the logits node."""
        node = self.graph.next_op(x, (*_RESHAPES, "MatMul", "Conv2D"), "the classifier")
        while node.op in _RESHAPES:
            node = self.graph.next_op(node.name, (*_RESHAPES, "MatMul"), "the classifier")
        kernel, kernel_name = self._classifier_kernel(node, in_features)
        classes = kernel.shape[1]
        self.set_num_classes(classes, kernel_name, kernel.shape)
        add = self.graph.next_op(node.name, ("BiasAdd", *ADD_OPS), "the classifier bias")
        # BiasAdd adds a [C] vector in either layout; Add broadcasts like any elementwise op.
        fmt = self.data_format if node.op == "Conv2D" and add.op != "BiasAdd" else "NHWC"
        const = self.graph.constant_inputs(add)
        bias, bias_name = self.graph.input_value(add, const[0]) if len(const) == 1 else (None, "")
        vector = None if bias is None else per_channel(bias, classes, fmt)
        if vector is None:
            found = "no constant" if bias is None else f"{bias_name} of shape {bias.shape}"
            raise UserError(
                f"{self.source}: {add.name} ({add.op}) adds {found} to the {classes} classes "
                f"of classifier kernel {kernel_name}, where a {classes}-class bias was expected"
            )
        logits = add
        while True:  # SpatialSqueeze, Predictions/Reshape, ... (a Shape op may read them too)
            nxt = self.graph.data_consumers(logits.name)
            if len(nxt) != 1 or nxt[0].op not in _RESHAPES:
                break
            logits = nxt[0]
        # (in, classes) kernel -> Linear (classes, in) or 1x1 Conv2d (classes, in, 1, 1).
        weight = kernel.T[:, :, None, None] if as_conv else kernel.T
        self.put(f"{prefix}.weight", weight, kernel_name)
        self.put(f"{prefix}.bias", vector, bias_name)
        return self.graph.output_identity(logits.name)

    def _classifier_kernel(self, node, in_features: int) -> tuple[np.ndarray, str]:
        kernel, name = self.graph.input_value(node, 1)
        if node.op == "MatMul":
            if node.attr["transpose_a"].b:
                raise UserError(f"{self.source}: {node.name} (MatMul) transposes its input")
            if node.attr["transpose_b"].b and kernel.ndim == 2:
                kernel = kernel.T
        else:
            self._check_format(node)
            strides = self.spatial_pair(node, "strides")
            if kernel.shape[:2] != (1, 1) or strides != (1, 1):
                raise UserError(
                    f"{self.source}: {node.name} (Conv2D) has a {kernel.shape[:2]} kernel "
                    f"with strides {strides}, where a 1x1 classifier was expected"
                )
            kernel = kernel.reshape(kernel.shape[2:])
        if kernel.ndim != 2 or kernel.shape[0] != in_features:
            raise UserError(
                f"{self.source}: classifier {node.name} ({node.op}) reads {name} of shape "
                f"{tuple(kernel.shape)}, where ({in_features}, classes) was expected"
            )
        return kernel, name

    def set_num_classes(self, classes: int, kernel_name: str, shape) -> None:
        if classes not in (1000, 1001):  # without / with TF-slim's "background" class 0
            raise UserError(
                f"{self.source}: classifier {kernel_name} has {classes} classes (shape "
                f"{tuple(shape)}), but {self.profile.name} has 1001 (with background) or 1000"
            )
        if classes != self.num_classes:
            self.num_classes = classes
            self.expected = self.module_class(num_classes=classes).state_dict()

    # ---------------------------------------------------------------- state_dict

    def put(self, key: str, value: np.ndarray, tf_name: str, perm=None) -> None:
        """Store ``value`` (axes permuted by ``perm``) as ``key``; refuse a shape it lacks."""
        if key not in self.expected:
            raise AssertionError(f"model has no parameter {key}")
        want = tuple(self.expected[key].shape)
        tensor = torch.from_numpy(np.array(value, dtype=np.float32))
        if perm is not None:
            tensor = tensor.permute(*perm)
        if tuple(tensor.shape) != want:
            raise UserError(
                f"{self.source}: tensor {tf_name} has shape {tuple(value.shape)}, "
                f"which does not fit {key} of {self.profile.name} (needs {want} in PyTorch layout)"
            )
        self.state[key] = tensor.contiguous()
        self.sources[key] = tf_name

    def put_conv(self, prefix: str, conv: ConvOp) -> None:
        # HWIO -> OIHW; depthwise (H, W, C, 1) -> (C, 1, H, W).
        perm = (2, 3, 0, 1) if conv.depthwise else (3, 2, 0, 1)
        self.put(f"{prefix}.weight", conv.kernel, conv.kernel_tensor, perm)

    def put_bn(self, prefix: str, bn: BatchNormParams) -> None:
        for key, value, role in (
            ("weight", bn.gamma, "gamma"),
            ("bias", bn.beta, "beta"),
            ("running_mean", bn.mean, "moving_mean"),
            ("running_var", bn.variance, "moving_variance"),
        ):
            self.put(f"{prefix}.{key}", value, bn.tensors.get(role, f"{bn.output} ({bn.encoding})"))
        self.eps[prefix] = bn.epsilon
        self.encodings[prefix] = bn.encoding
        self._block_encodings.append(bn.encoding)

    def conv_bn(self, conv: ConvOp, layer, conv_prefix, bn_prefix, *, stride, padding, size=None):
        """Check, store and return the batch norm of a conv the model has at ``conv_prefix``."""
        self.check_conv(conv, layer, stride, padding, size)
        self.put_conv(conv_prefix, conv)
        bn = self.batch_norm(conv)
        self.put_bn(bn_prefix, bn)
        return bn

    def add_layer(self, layer: str, module: str, tf_node: str) -> None:
        """Record a verification point, with the BN encodings stored since the last one."""
        encoding = "+".join(sorted(set(self._block_encodings)))
        self.layers.append(LayerTensor(layer, module, tf_node, encoding))
        self._block_encodings = []

    # ---------------------------------------------------------------- result

    def finish(self, logits_tensor: str, input_tensor: str) -> ExtractedWeights:
        for key, value in self.expected.items():
            if key.endswith("num_batches_tracked"):
                self.state[key] = value.clone()
        missing = [k for k in self.expected if k not in self.state]
        if missing:
            raise AssertionError(f"walker left parameters unset: {missing[:5]}")
        common_eps = Counter(self.eps.values()).most_common(1)[0][0]
        per_layer = {k: v for k, v in self.eps.items() if v != common_eps}
        hyper: dict[str, Any] = {"num_classes": self.num_classes, "bn_eps": common_eps}
        if per_layer:
            hyper["bn_eps_per_layer"] = per_layer
            if set(self.encodings.values()) <= {"fused", "decomposed"}:
                log.warning("batch-norm epsilons differ between layers: %s", per_layer)
        ignored = sorted(set(self.graph.weight_consts()) - self.graph.used_consts)
        if ignored:
            log.warning(
                "%d weight tensors in the graph are not part of %s and were ignored: %s",
                len(ignored),
                self.profile.name,
                ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""),
            )
        counts = Counter(self.encodings.values())
        return ExtractedWeights(
            state_dict=self.state,
            hyperparameters=hyper,
            data_format=self.data_format or "NHWC",
            bn_encoding_summary="+".join(sorted(counts)),
            layer_tensors=self.layers,
            input_tensor=input_tensor,
            logits_tensor=logits_tensor,
            used_tensors=sorted(self.graph.used_consts),
            ignored_tensors=ignored,
            source_names=self.sources,
            num_classes=self.num_classes,
            bn_encodings=dict(self.encodings),
            bn_encoding_counts=dict(sorted(counts.items())),
            input_layout=self.input_layout or "NHWC",
        )
