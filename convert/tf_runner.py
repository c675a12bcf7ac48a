"""Run an original MLPerf frozen graph in TensorFlow, at any batch size.

The input placeholder is replaced by a ``[None, H, W, C]`` one, so graphs that pin the batch
to 1 still take whole batches (or, if a baked-in shape rejects them, one image at a time),
and a graph whose own placeholder is NCHW still takes NHWC batches (transposed inside).
NCHW conv/pool ops, which TF's CPU kernels lack, run NHWC between two Transposes; every
tensor name keeps its meaning. Before the graph is imported, and before any later fetch
runs, its nodes must pass ``convert.safety.check_graph_ops``: a frozen graph is a program.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import UserError, first_line
from core.profiles import ModelProfile, as_profile

from .graph import (
    _quiet_tensorflow,
    check_importable,
    node_name,
    read_frozen_graph,
    tensor_name,
)
from .safety import check_graph_ops

log = logging.getLogger(__name__)

_NCHW_LACKING_ON_CPU = ("Conv2D", "MaxPool", "AvgPool", "DepthwiseConv2dNative")


def _is_nchw(node) -> bool:
    return "data_format" in node.attr and node.attr["data_format"].s == b"NCHW"


def _lacks_nchw_kernel(node) -> bool:
    return _is_nchw(node) and node.op in _NCHW_LACKING_ON_CPU


def _add_transpose(graph_def: Any, name: str, source: str, perm: list[int], perm_name: str) -> None:
    """Append ``name = Transpose(source, perm)`` and its Const permutation ``perm_name``."""
    tf = _quiet_tensorflow()
    perm_node = graph_def.node.add(name=perm_name, op="Const")
    perm_node.attr["dtype"].type = tf.int32.as_datatype_enum
    perm_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array(perm, np.int32)))
    node = graph_def.node.add(name=name, op="Transpose", input=[source, perm_node.name])
    node.attr["T"].type = tf.float32.as_datatype_enum
    node.attr["Tperm"].type = tf.int32.as_datatype_enum


def channels_last_rewrite(graph_def: Any) -> Any:
    """Copy of ``graph_def`` where NCHW conv/pool nodes run NHWC inside two Transposes.

    Node ``X`` becomes ``X/to_nhwc -> X/nhwc -> X`` (the last a Transpose back), so every
    consumer and every tensor name is unchanged. Graphs without NCHW ops come back as is.
    """
    if not any(_lacks_nchw_kernel(n) for n in graph_def.node):
        return graph_def
    out = _quiet_tensorflow().compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if not _lacks_nchw_kernel(node):
            out.node.add().CopyFrom(node)
            continue
        base = node.name
        _add_transpose(out, f"{base}/to_nhwc", node.input[0], [0, 2, 3, 1], f"{base}/to_nhwc_perm")
        inner = out.node.add()
        inner.CopyFrom(node)
        inner.name = f"{base}/nhwc"
        inner.input[0] = f"{base}/to_nhwc"
        inner.attr["data_format"].s = b"NHWC"
        for key in ("strides", "ksize", "dilations"):
            values = inner.attr[key].list.i if key in inner.attr else []
            if len(values) == 4:
                values[:] = [values[0], values[2], values[3], values[1]]  # NCHW -> NHWC
        _add_transpose(out, base, inner.name, [0, 3, 1, 2], f"{base}/to_nchw_perm")
    return out


def placeholder_layout(graph_def: Any, placeholder: Any) -> str:
    """The layout ("NCHW" or "NHWC") the graph's input placeholder takes.

    A 4-d shape with the 3 colour channels on exactly one of axes 1 and 3 decides. A shape
    that leaves it open follows the graph: NCHW ops reading the input without a Transpose.
    """
    dims = placeholder_dims(placeholder)
    if len(dims) == 4 and (dims[1] == 3) != (dims[3] == 3):
        return "NCHW" if dims[1] == 3 else "NHWC"
    transposed = any(
        n.op == "Transpose" and node_name(n.input[0]) == placeholder.name for n in graph_def.node
    )
    nchw = any(_is_nchw(n) for n in graph_def.node)
    return "NCHW" if nchw and not transposed else "NHWC"


def placeholder_dims(placeholder: Any) -> list[int]:
    """The placeholder's declared dimensions (-1 where unknown; [] when it has no shape)."""
    if "shape" not in placeholder.attr or placeholder.attr["shape"].shape.unknown_rank:
        return []
    return [d.size for d in placeholder.attr["shape"].shape.dim]


def _runner_input_shape(
    placeholder: Any, layout: str
) -> tuple[list[int | None] | None, int | None]:
    """The NHWC shape of the runner's own placeholder (batch left open; None when the
    original has no shape), and the batch size the original pins (None when it pins none)."""
    dims = placeholder_dims(placeholder)
    if layout == "NCHW" and len(dims) == 4:
        dims = [dims[0], dims[2], dims[3], dims[1]]
    shape = [None, *[d if d > 0 else None for d in dims[1:]]] if dims else None
    pinned_batch = dims[0] if dims and dims[0] > 0 else None
    return shape, pinned_batch


class TFGraphRunner:
    """The original frozen graph in one TF session; takes NHWC float32 batches of any size.

    ``checkpoint_path`` is a ``.pb`` or MLPerf ``.tgz``; ``profile`` a ModelProfile or a
    model name; pass ``graph_def`` to reuse one already read. Call ``close()`` (or use
    ``with``) to free the session early.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        profile: ModelProfile | str,
        *,
        graph_def: Any = None,
        input_tensor: str | None = None,
        logits_tensor: str | None = None,
    ):
        self.profile = as_profile(profile)
        # The sha256 of the bytes parsed, when this runner read them (None for a graph_def).
        self.source_sha256: str | None = None
        self.source = str(checkpoint_path)
        if graph_def is None:
            graph_def, self.source_sha256 = read_frozen_graph(
                checkpoint_path, self.profile.archive_member
            )
        else:  # read_frozen_graph checks its own
            check_importable(graph_def, self.source)
        self.input_name = node_name(input_tensor or self.profile.input_tensor)
        self.logits_tensor = tensor_name(logits_tensor or self.profile.logits_tensor)
        original = self._find_input_placeholder(graph_def, checkpoint_path)
        # Before TensorFlow sees the graph: nothing but pure tensor ops may run.
        self._graph_def = graph_def
        self._checked: set[str] = set()
        self._check_fetches([self.logits_tensor])
        self.input_layout = placeholder_layout(graph_def, original)
        shape, self.pinned_batch = _runner_input_shape(original, self.input_layout)
        self._import_graph(graph_def, shape)
        self.session = _quiet_tensorflow().compat.v1.Session(graph=self.graph)
        self._one_at_a_time = False

    def _find_input_placeholder(self, graph_def: Any, checkpoint_path: str | os.PathLike) -> Any:
        """The graph's own input node (UserError when the graph has none by that name)."""
        original = next((n for n in graph_def.node if n.name == self.input_name), None)
        if original is None:
            raise UserError(f"{checkpoint_path} has no input tensor {self.input_name}:0")
        return original

    def _import_graph(self, graph_def: Any, shape: list[int | None] | None) -> None:
        """Import the graph into ``self.graph``, fed by an NHWC placeholder ``self._input``."""
        tf = _quiet_tensorflow()
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._input = tf.compat.v1.placeholder(tf.float32, shape, name="runner_input")
            graph_input = self._input
            if self.input_layout == "NCHW":
                graph_input = tf.transpose(self._input, [0, 3, 1, 2], name="runner_input_nchw")
            try:
                tf.compat.v1.import_graph_def(
                    channels_last_rewrite(graph_def),
                    input_map={tensor_name(self.input_name): graph_input},
                    name="",
                )
            except (ValueError, tf.errors.OpError) as err:  # what check_importable missed
                raise UserError(
                    f"TensorFlow cannot load graph {self.source} ({first_line(err, 200)})"
                ) from None

    def _check_fetches(self, names: Sequence[str]) -> None:
        """Refuse (UserError) any fetch whose nodes are not all pure tensor ops."""
        new = [node_name(n) for n in names if node_name(n) not in self._checked]
        if new:
            check_graph_ops(self._graph_def, new, self.source)
            self._checked.update(new)

    def run(self, nhwc: np.ndarray, tensor_names: Sequence[str]) -> list[np.ndarray]:
        """Values of ``tensor_names`` (node or tensor names) for an NHWC float32 batch."""
        tf = _quiet_tensorflow()
        self._check_fetches(tensor_names)
        batch = np.ascontiguousarray(nhwc, dtype=np.float32)
        fetches = [self.graph.get_tensor_by_name(tensor_name(n)) for n in tensor_names]
        if not self._one_at_a_time:
            try:
                return [np.asarray(v) for v in self.session.run(fetches, {self._input: batch})]
            except tf.errors.InvalidArgumentError as err:
                # Only a graph exported for batch 1 may still bake that size into a later
                # shape; on any other graph the error is real and must surface now.
                if len(batch) <= 1 or self.pinned_batch is None:
                    raise
                log.info(
                    "the graph rejects a batch of %d (%s); running one image at a time",
                    len(batch),
                    first_line(err),
                )
                self._one_at_a_time = True
        parts = [
            self.session.run(fetches, {self._input: batch[i : i + 1]}) for i in range(len(batch))
        ]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(fetches))]

    def logits(self, nhwc: np.ndarray) -> np.ndarray:
        """Logits [N, num_classes] (pre-softmax) for an NHWC float32 batch."""
        return self.run(nhwc, [self.logits_tensor])[0]

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> TFGraphRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
