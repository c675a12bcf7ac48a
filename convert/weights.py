"""Frozen TF graph -> PyTorch state_dict, found by following the graph's edges.

The walkers start at the input placeholder and follow consumers: which Conv2D reads which
kernel, which batch norm consumes which conv, which Add joins which branches. They never
rely on the numbering of node names (``conv2d_17``), so a file that differs is reported by
what was actually found. Along the way they check the hyperparameters the PyTorch model
hard-codes (strides, padding, data format, kernel shapes, class count) and record the TF
tensor that corresponds to each model block, for the layer-by-layer verification.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.errors import UserError
from core.profiles import get_profile

from .graph import ADD_OPS, BatchNormParams, Graph, node_name, tensor_name
from .models import build_model
from .models import mobilenet_v1 as mobilenet_arch
from .models import resnet as resnet_arch

log = logging.getLogger(__name__)

CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")


@dataclass
class ConvOp:
    """One convolution as the graph runs it (explicit Pad folded in)."""

    node: str
    kernel: np.ndarray
    kernel_tensor: str
    stride: tuple[int, int]
    padding: str  # the conv's own "SAME"/"VALID"
    explicit_pad: tuple[tuple[int, int], tuple[int, int]] | None  # from a preceding Pad


@dataclass
class LayerTensor:
    """A model block and the TF tensor holding the same activation."""

    layer: str  # display name, e.g. "layer1.0"
    module: str  # torch module path ("" = the whole model's output)
    tf_tensor: str


@dataclass
class ExtractedWeights:
    """Everything a conversion needs from the graph."""

    model_name: str
    state_dict: dict[str, torch.Tensor]
    hyperparameters: dict[str, Any]  # build_model kwargs
    data_format: str
    bn_form: str
    layer_tensors: list[LayerTensor]
    input_tensor: str
    logits_tensor: str
    used_tensors: list[str]
    ignored_tensors: list[str]
    source_names: dict[str, str] = field(default_factory=dict)  # state_dict key -> TF const


def _spatial_axes(data_format: str) -> tuple[int, int]:
    return (2, 3) if data_format == "NCHW" else (1, 2)


class _Walker:
    """Shared bookkeeping: state_dict entries with shape checks, BN epsilons, data format."""

    def __init__(self, graph: Graph, model_name: str):
        self.graph = graph
        self.model_name = model_name
        self.profile = get_profile(model_name)
        self.expected = build_model(model_name).state_dict()
        self.state: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}
        self.eps: dict[str, float] = {}
        self.bn_forms: set[str] = set()
        self.data_format: str | None = None
        self.layers: list[LayerTensor] = []

    # ---------------------------------------------------------------- input

    def input_node(self) -> str:
        name = node_name(self.profile.input_tensor)
        if not self.graph.has(name):
            placeholders = [n.name for n in self.graph.graph_def.node if n.op == "Placeholder"]
            found = ", ".join(placeholders) or "none"
            raise UserError(
                f"{self.graph.source} has no input tensor {self.profile.input_tensor}, so it is "
                f"not a {self.model_name} graph (its placeholders: {found})"
            )
        node = self.graph.nodes[name]
        if node.op != "Placeholder":
            raise UserError(f"{self.graph.source}: input {name} is a {node.op}, not a Placeholder")
        return name

    def skip_layout_transpose(self, name: str) -> str:
        """Channels-first exports start with Transpose(NHWC -> NCHW); step over it."""
        consumers = self.graph.consumers(name)
        if len(consumers) == 1 and consumers[0].op == "Transpose":
            perm = self.graph.const(self.graph.data_inputs(consumers[0])[1]).tolist()
            if perm != [0, 3, 1, 2]:
                raise UserError(
                    f"{self.graph.source}: input transpose {consumers[0].name} has perm {perm}, "
                    f"expected [0, 3, 1, 2] (NHWC -> NCHW)"
                )
            return consumers[0].name
        return name

    # ---------------------------------------------------------------- ops

    def _check_format(self, node) -> str:
        fmt = self.graph.attr_str(node, "data_format", "NHWC")
        if fmt not in ("NHWC", "NCHW"):
            raise UserError(f"{self.graph.source}: {node.name} uses data_format {fmt}")
        if self.data_format is None:
            self.data_format = fmt
        elif fmt != self.data_format:
            raise UserError(
                f"{self.graph.source}: {node.name} computes in {fmt} but earlier layers in "
                f"{self.data_format}"
            )
        return fmt

    def _stride(self, node, key: str = "strides") -> tuple[int, int]:
        values = self.graph.attr_ints(node, key)
        if len(values) != 4:
            raise UserError(f"{self.graph.source}: {node.name} has no 4-element {key} attr")
        h, w = _spatial_axes(self.data_format or "NHWC")
        return values[h], values[w]

    def conv_from(self, name: str, layer: str, ops: tuple[str, ...] = CONV_OPS) -> ConvOp:
        """The conv reading ``name``'s output, possibly through an explicit Pad."""
        first = self.graph.next_op(name, ("Pad", *ops), f"the conv of {layer}")
        return self.conv_at(first, layer, ops)

    def conv_at(self, first, layer: str, ops: tuple[str, ...] = CONV_OPS) -> ConvOp:
        explicit_pad = None
        node = first
        if first.op == "Pad":
            paddings, _ = self.graph.input_const(first, 1)
            node = self.graph.next_op(first.name, ops, f"the conv of {layer}")
            fmt = self._check_format(node)
            h, w = _spatial_axes(fmt)
            other = [paddings[i].tolist() for i in range(4) if i not in (h, w)]
            if any(p != [0, 0] for p in other):
                raise UserError(
                    f"{self.graph.source}: {first.name} pads batch or channels "
                    f"({paddings.tolist()})"
                )
            explicit_pad = (tuple(paddings[h].tolist()), tuple(paddings[w].tolist()))
        else:
            self._check_format(node)
        dilations = self.graph.attr_ints(node, "dilations")
        if dilations and any(d != 1 for d in dilations):
            raise UserError(f"{self.graph.source}: {node.name} is dilated ({dilations})")
        kernel, kernel_name = self.graph.input_const(node, 1)
        return ConvOp(
            node=node.name,
            kernel=kernel,
            kernel_tensor=kernel_name,
            stride=self._stride(node),
            padding=self.graph.attr_str(node, "padding"),
            explicit_pad=explicit_pad,
        )

    def check_conv(self, conv: ConvOp, layer: str, stride: int, padding: str) -> None:
        """Compare the graph's stride/padding with the model's.

        ``padding`` is what the PyTorch layer does: "symmetric" (``padding=(k-1)//2``) or
        "same" (TF SAME via TFSamePad2d). Equivalent TF forms are accepted.
        """
        if conv.stride != (stride, stride):
            raise UserError(
                f"{self.graph.source}: {conv.node} ({layer}) has strides {conv.stride}, "
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
            ok = conv.explicit_pad is None and conv.padding == "SAME"
        if not ok:
            raise UserError(
                f"{self.graph.source}: {conv.node} ({layer}) pads {conv.explicit_pad} and runs "
                f"{conv.padding}, which the model's {padding} padding does not reproduce"
            )

    # ---------------------------------------------------------------- state_dict

    def put(self, key: str, value: np.ndarray, tf_name: str, to_torch=None) -> None:
        if key not in self.expected:
            raise AssertionError(f"model has no parameter {key}")
        want = tuple(self.expected[key].shape)
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if to_torch is not None:
            if tensor.dim() != len(want):
                raise UserError(
                    f"{self.graph.source}: tensor {tf_name} has shape {tuple(value.shape)}, "
                    f"but {key} needs a {len(want)}-d tensor"
                )
            tensor = to_torch(tensor)
        if tuple(tensor.shape) != want:
            raise UserError(
                f"{self.graph.source}: tensor {tf_name} has shape {tuple(value.shape)}, "
                f"which does not fit {key} of {self.model_name} (needs {want} in PyTorch layout)"
            )
        self.state[key] = tensor.contiguous()
        self.sources[key] = tf_name

    def put_conv(self, prefix: str, conv: ConvOp, depthwise: bool = False) -> None:
        # HWIO -> OIHW; depthwise (H, W, C, 1) -> (C, 1, H, W).
        perm = (2, 3, 0, 1) if depthwise else (3, 2, 0, 1)
        self.put(f"{prefix}.weight", conv.kernel, conv.kernel_tensor, lambda t: t.permute(*perm))

    def put_bn(self, prefix: str, bn: BatchNormParams) -> None:
        for key, value, role in (
            ("weight", bn.gamma, "gamma"),
            ("bias", bn.beta, "beta"),
            ("running_mean", bn.mean, "moving_mean"),
            ("running_var", bn.variance, "moving_variance"),
        ):
            self.put(f"{prefix}.{key}", value, bn.tensors.get(role, f"{bn.output} {role}"))
        self.eps[prefix] = bn.epsilon
        self.bn_forms.add(bn.form)

    def conv_bn(self, name: str, layer: str, conv_prefix: str, bn_prefix: str, **check):
        conv = self.conv_from(name, layer)
        return self.conv_bn_at(conv, layer, conv_prefix, bn_prefix, **check)

    def conv_bn_at(
        self, conv: ConvOp, layer, conv_prefix, bn_prefix, *, stride, padding, depthwise=False
    ):
        self.check_conv(conv, layer, stride, padding)
        if depthwise != (self.graph.nodes[conv.node].op == "DepthwiseConv2dNative"):
            kind = "a depthwise" if depthwise else "a regular"
            raise UserError(f"{self.graph.source}: {conv.node} ({layer}) is not {kind} conv")
        self.put_conv(conv_prefix, conv, depthwise)
        bn = self.graph.batch_norm_after(conv.node)
        self.put_bn(bn_prefix, bn)
        return bn

    # ---------------------------------------------------------------- result

    def finish(self, logits_tensor: str, input_tensor: str) -> ExtractedWeights:
        for key, value in self.expected.items():
            if key.endswith("num_batches_tracked"):
                self.state[key] = value.clone()
        missing = [k for k in self.expected if k not in self.state]
        if missing:
            raise AssertionError(f"walker left parameters unset: {missing[:5]}")
        eps_values = Counter(self.eps.values())
        common_eps = eps_values.most_common(1)[0][0]
        per_layer = {k: v for k, v in self.eps.items() if v != common_eps}
        hyper: dict[str, Any] = {"num_classes": self.profile.num_classes, "bn_eps": common_eps}
        if per_layer:
            hyper["bn_eps_per_layer"] = per_layer
            log.warning("batch-norm epsilons differ between layers: %s", per_layer)
        used = sorted(self.graph.used_consts)
        ignored = sorted(set(self.graph.weight_consts()) - self.graph.used_consts)
        if ignored:
            log.warning(
                "%d weight tensors in the graph are not part of %s and were ignored: %s",
                len(ignored),
                self.model_name,
                ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""),
            )
        return ExtractedWeights(
            model_name=self.model_name,
            state_dict=self.state,
            hyperparameters=hyper,
            data_format=self.data_format or "NHWC",
            bn_form="+".join(sorted(self.bn_forms)),
            layer_tensors=self.layers,
            input_tensor=input_tensor,
            logits_tensor=logits_tensor,
            used_tensors=used,
            ignored_tensors=ignored,
            source_names=self.sources,
        )


# ============================================================================ ResNet-50


@dataclass
class _Branch:
    convs: list[tuple[ConvOp, BatchNormParams]]
    add: Any


def _resnet_branch(w: _Walker, first, block: str) -> _Branch:
    """Follow conv -> BN (-> Relu -> conv -> BN ...) from ``first`` until an Add."""
    convs = []
    node = first
    while True:
        conv = w.conv_at(node, block)
        bn = w.graph.batch_norm_after(conv.node)
        convs.append((conv, bn))
        after = w.graph.next_op(bn.output, ("Relu", *ADD_OPS), f"Relu or Add in {block}")
        if after.op in ADD_OPS:
            return _Branch(convs, after)
        node = w.graph.next_op(after.name, ("Pad", "Conv2D"), f"the next conv of {block}")


def _resnet_block(w: _Walker, x: str, block: str):
    """Read one bottleneck whose input is node ``x``; return (main, shortcut or None, relu)."""
    consumers = w.graph.consumers(x)
    starts = [c for c in consumers if c.op in ("Pad", "Conv2D")]
    direct_adds = [c for c in consumers if c.op in ADD_OPS]
    if not starts or len(starts) + len(direct_adds) != len(consumers):
        found = ", ".join(f"{c.name} ({c.op})" for c in consumers) or "nothing"
        raise UserError(f"{w.graph.source}: expected bottleneck {block} after {x}, found {found}")
    branches = [_resnet_branch(w, s, block) for s in starts]
    main = [b for b in branches if len(b.convs) == 3]
    shortcut = [b for b in branches if len(b.convs) == 1]
    if len(main) != 1 or len(main) + len(shortcut) != len(branches) or len(shortcut) > 1:
        sizes = [len(b.convs) for b in branches]
        raise UserError(
            f"{w.graph.source}: block {block} after {x} has branches of {sizes} convs, expected "
            f"a 3-conv main branch and a 1-conv or identity shortcut"
        )
    add = main[0].add
    if shortcut and shortcut[0].add.name != add.name or (not shortcut and add not in direct_adds):
        raise UserError(f"{w.graph.source}: the branches of block {block} do not meet in one Add")
    relu = w.graph.next_op(add.name, ("Relu",), f"the Relu closing {block}")
    return main[0], (shortcut[0] if shortcut else None), relu


def extract_resnet50(graph: Graph) -> ExtractedWeights:
    w = _Walker(graph, "resnet50")
    input_name = w.input_node()
    x = w.skip_layout_transpose(input_name)

    bn = w.conv_bn(x, "conv1", "conv1", "bn1", stride=2, padding="symmetric")
    relu = w.graph.next_op(bn.output, ("Relu",), "the stem Relu")
    w.layers.append(LayerTensor("stem (conv1/bn1/relu)", "relu", relu.name))
    pool = w.graph.next_op(relu.name, ("MaxPool",), "the stem max-pool")
    ksize = w._stride(pool, "ksize")
    if ksize != (3, 3) or w._stride(pool) != (2, 2) or w.graph.attr_str(pool, "padding") != "SAME":
        raise UserError(
            f"{graph.source}: max-pool {pool.name} is {ksize}/{w._stride(pool)} "
            f"{w.graph.attr_str(pool, 'padding')}, expected 3x3/2 SAME"
        )
    w.layers.append(LayerTensor("maxpool", "maxpool", pool.name))

    # Blocks until the global mean; a projection shortcut starts a new stage.
    x = pool.name
    stages: list[list[tuple[_Branch, _Branch | None, Any]]] = []
    while not any(c.op == "Mean" for c in graph.consumers(x)):
        main, shortcut, relu = _resnet_block(w, x, f"block {sum(map(len, stages)) + 1}")
        if shortcut is not None or not stages:
            stages.append([])
        stages[-1].append((main, shortcut, relu))
        x = relu.name
    found = tuple(len(s) for s in stages)
    if found != resnet_arch.STAGE_BLOCKS:
        raise UserError(
            f"{graph.source} has stages of {found} bottleneck blocks, but ResNet-50 has "
            f"{resnet_arch.STAGE_BLOCKS}"
        )
    for s, (blocks, stride) in enumerate(zip(stages, resnet_arch.STAGE_STRIDES, strict=True), 1):
        for b, (main, shortcut, relu) in enumerate(blocks):
            prefix = f"layer{s}.{b}"
            block_stride = stride if b == 0 else 1
            for i, (conv, bn) in enumerate(main.convs, start=1):
                w.check_conv(conv, prefix, block_stride if i == 2 else 1, "symmetric")
                w.put_conv(f"{prefix}.conv{i}", conv)
                w.put_bn(f"{prefix}.bn{i}", bn)
            if b == 0:
                if shortcut is None:
                    raise UserError(f"{graph.source}: {prefix} has no projection shortcut")
                conv, bn = shortcut.convs[0]
                w.check_conv(conv, f"{prefix}.downsample", block_stride, "symmetric")
                w.put_conv(f"{prefix}.downsample.0", conv)
                w.put_bn(f"{prefix}.downsample.1", bn)
            w.layers.append(LayerTensor(prefix, prefix, relu.name))

    mean = w.graph.next_op(x, ("Mean",), "the global average pool")
    axes = sorted(int(a) for a in np.ravel(graph.input_const(mean, 1)[0]))
    if axes != list(_spatial_axes(w.data_format or "NHWC")):
        raise UserError(f"{graph.source}: {mean.name} averages over axes {axes}, not H and W")
    pooled = mean
    while True:
        nxt = w.graph.next_op(pooled.name, ("Squeeze", "Reshape", "MatMul"), "the dense layer")
        if nxt.op == "MatMul":
            break
        pooled = nxt
    w.layers.append(LayerTensor("avgpool", "avgpool", pooled.name))
    matmul = nxt
    if matmul.attr["transpose_b"].b or matmul.attr["transpose_a"].b:
        raise UserError(f"{graph.source}: {matmul.name} transposes its operands")
    kernel, kernel_name = graph.input_const(matmul, 1)
    _check_classes(w, kernel, kernel_name)
    w.put("fc.weight", kernel, kernel_name, lambda t: t.t())
    bias_add = w.graph.next_op(matmul.name, ("BiasAdd", *ADD_OPS), "the dense bias")
    bias, bias_name = graph.input_const(bias_add, 1)
    w.put("fc.bias", bias, bias_name)
    logits = graph.output_identity(bias_add.name)
    w.layers.append(LayerTensor("logits (fc)", "", logits))
    return w.finish(tensor_name(logits), tensor_name(input_name))


def _check_classes(w: _Walker, kernel: np.ndarray, kernel_name: str) -> None:
    classes = kernel.shape[-1] if kernel.ndim else 0
    if classes != w.profile.num_classes:
        raise UserError(
            f"{w.graph.source}: classifier {kernel_name} has {classes} classes (shape "
            f"{tuple(kernel.shape)}), but {w.model_name} has {w.profile.num_classes}"
        )


# ============================================================================ MobileNet-v1


def extract_mobilenet_v1(graph: Graph) -> ExtractedWeights:
    w = _Walker(graph, "mobilenet_v1")
    input_name = w.input_node()
    x = w.skip_layout_transpose(input_name)

    bn = w.conv_bn(x, "features.0", "features.0.conv", "features.0.bn", stride=2, padding="same")
    x = w.graph.next_op(bn.output, ("Relu6",), "the ReLU6 of features.0").name
    w.layers.append(LayerTensor("features.0", "features.0", x))

    for index, (_, stride) in enumerate(mobilenet_arch.BLOCKS, start=1):
        block = f"features.{index}"
        first = w.graph.next_op(
            x, ("Pad", "DepthwiseConv2dNative"), f"the depthwise conv of {block}"
        )
        conv = w.conv_at(first, block)
        bn = w.conv_bn_at(
            conv,
            block,
            f"{block}.depthwise.conv",
            f"{block}.depthwise.bn",
            stride=stride,
            padding="same",
            depthwise=True,
        )
        x = w.graph.next_op(bn.output, ("Relu6",), f"the depthwise ReLU6 of {block}").name
        bn = w.conv_bn(
            x, block, f"{block}.pointwise.conv", f"{block}.pointwise.bn", stride=1, padding="same"
        )
        x = w.graph.next_op(bn.output, ("Relu6",), f"the pointwise ReLU6 of {block}").name
        w.layers.append(LayerTensor(block, block, x))

    pool = w.graph.next_op(x, ("AvgPool",), "the 7x7 average pool after 13 blocks")
    if w._stride(pool, "ksize") != (7, 7) or w.graph.attr_str(pool, "padding") != "VALID":
        raise UserError(f"{graph.source}: {pool.name} is not a 7x7 VALID average pool")
    w.layers.append(LayerTensor("avgpool", "avgpool", pool.name))

    conv = w.conv_from(pool.name, "classifier", ("Conv2D",))
    w.check_conv(conv, "classifier", 1, "same")
    _check_classes(w, conv.kernel, conv.kernel_tensor)
    w.put_conv("classifier", conv)
    bias_add = w.graph.next_op(conv.node, ("BiasAdd", *ADD_OPS), "the logits bias")
    bias, bias_name = graph.input_const(bias_add, 1)
    w.put("classifier.bias", bias, bias_name)
    logits = bias_add
    while True:  # SpatialSqueeze -> Predictions/Reshape (a Shape op may read them too)
        nxt = [c for c in graph.consumers(logits.name) if c.op != "Shape"]
        if len(nxt) == 1 and nxt[0].op in ("Squeeze", "Reshape"):
            logits = nxt[0]
        else:
            break
    w.layers.append(LayerTensor("logits (classifier)", "", logits.name))
    return w.finish(tensor_name(logits.name), tensor_name(input_name))


EXTRACTORS = {"resnet50": extract_resnet50, "mobilenet_v1": extract_mobilenet_v1}


def extract_weights(graph_def: Any, model_name: str, source: str = "the graph") -> ExtractedWeights:
    """Walk ``graph_def`` as ``model_name`` and return its state_dict plus what was found.

    Raises UserError (one sentence naming the tensor) when the graph is not that model.
    """
    get_profile(model_name)
    return EXTRACTORS[model_name](Graph(graph_def, source))
