"""Run an original MLPerf frozen graph in TensorFlow, at any batch size.

The graph is imported once, into one reused session, with its input placeholder replaced by
a new ``[None, H, W, C]`` one (``input_map``), so files that pin the batch to 1 still take
whole batches. If some baked-in shape still rejects a batch, the runner falls back to one
image at a time. Channels-first graphs are rewritten so that the ops TF's CPU kernels lack
in NCHW (Conv2D, MaxPool, AvgPool, depthwise) run NHWC between two Transposes; every
original tensor name keeps its meaning and layout.

A frozen graph is a program: before the graph is imported, every node the logits depend on
must pass ``convert.safety.check_graph_ops``, and so must every node of any other tensor
fetched later, before the session runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import UserError
from core.profiles import ModelProfile, as_profile

from .graph import _quiet_tensorflow, node_name, read_graph_def, tensor_name
from .safety import check_graph_ops

log = logging.getLogger(__name__)

_NCHW_LACKING_ON_CPU = ("Conv2D", "MaxPool", "AvgPool", "DepthwiseConv2dNative")


def _nchw_to_nhwc(values: Sequence[int]) -> list[int]:
    n, c, h, w = values
    return [n, h, w, c]


def channels_last_rewrite(graph_def: Any) -> Any:
    """Copy of ``graph_def`` where NCHW conv/pool nodes run NHWC inside two Transposes.

    Node ``X`` becomes ``X/to_nhwc -> X/nhwc -> X`` (the last a Transpose back), so every
    consumer and every tensor name is unchanged. Graphs without NCHW ops come back as is.
    """
    tf = _quiet_tensorflow()
    if not any(
        n.op in _NCHW_LACKING_ON_CPU and n.attr["data_format"].s == b"NCHW"
        for n in graph_def.node
        if "data_format" in n.attr
    ):
        return graph_def
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    int32, float32 = tf.int32.as_datatype_enum, tf.float32.as_datatype_enum
    for node in graph_def.node:
        is_nchw = "data_format" in node.attr and node.attr["data_format"].s == b"NCHW"
        if node.op not in _NCHW_LACKING_ON_CPU or not is_nchw:
            out.node.add().CopyFrom(node)
            continue
        base = node.name
        for suffix, perm in (("to_nhwc_perm", [0, 2, 3, 1]), ("to_nchw_perm", [0, 3, 1, 2])):
            perm_node = out.node.add()
            perm_node.name, perm_node.op = f"{base}/{suffix}", "Const"
            perm_node.attr["dtype"].type = int32
            perm_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array(perm, np.int32)))
        to_nhwc = out.node.add()
        to_nhwc.name, to_nhwc.op = f"{base}/to_nhwc", "Transpose"
        to_nhwc.input.extend([node.input[0], f"{base}/to_nhwc_perm"])
        to_nhwc.attr["T"].type = float32
        to_nhwc.attr["Tperm"].type = int32
        inner = out.node.add()
        inner.CopyFrom(node)
        inner.name = f"{base}/nhwc"
        inner.input[0] = to_nhwc.name
        inner.attr["data_format"].s = b"NHWC"
        for key in ("strides", "ksize", "dilations"):
            if key in inner.attr and len(inner.attr[key].list.i) == 4:
                values = _nchw_to_nhwc(list(inner.attr[key].list.i))
                del inner.attr[key].list.i[:]
                inner.attr[key].list.i.extend(values)
        back = out.node.add()
        back.name, back.op = base, "Transpose"
        back.input.extend([inner.name, f"{base}/to_nchw_perm"])
        back.attr["T"].type = float32
        back.attr["Tperm"].type = int32
    return out


class TFGraphRunner:
    """The original frozen graph in one TF session; feeds NHWC float32 batches of any size.

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
        if graph_def is None:
            graph_def = read_graph_def(checkpoint_path, self.profile.archive_member)
        self.source = str(checkpoint_path)
        self.input_name = node_name(input_tensor or self.profile.input_tensor)
        self.logits_tensor = tensor_name(logits_tensor or self.profile.logits_tensor)
        original = next((n for n in graph_def.node if n.name == self.input_name), None)
        if original is None:
            raise UserError(f"{checkpoint_path} has no input tensor {self.input_name}:0")
        # Before TensorFlow sees the graph: nothing but pure tensor ops may run.
        self._graph_def = graph_def
        self._checked: set[str] = set()
        self._check_fetches([self.logits_tensor])
        dims = (
            [d.size for d in original.attr["shape"].shape.dim] if "shape" in original.attr else []
        )
        shape = [None, *[d if d > 0 else None for d in dims[1:]]] if dims else None
        self.pinned_batch = dims[0] if dims and dims[0] > 0 else None

        tf = _quiet_tensorflow()
        self.graph = tf.Graph()
        with self.graph.as_default():
            self._input = tf.compat.v1.placeholder(tf.float32, shape, name="runner_input")
            tf.compat.v1.import_graph_def(
                channels_last_rewrite(graph_def),
                input_map={tensor_name(self.input_name): self._input},
                name="",
            )
        self.session = tf.compat.v1.Session(graph=self.graph)
        self._one_at_a_time = False

    def _check_fetches(self, names: Sequence[str]) -> None:
        """Refuse (UserError) any fetch whose nodes are not all pure tensor ops."""
        new = [node_name(n) for n in names if node_name(n) not in self._checked]
        if new:
            check_graph_ops(self._graph_def, new, self.source)
            self._checked.update(new)

    def _tensor(self, name: str):
        return self.graph.get_tensor_by_name(tensor_name(name))

    def run(self, nhwc: np.ndarray, tensor_names: Sequence[str]) -> list[np.ndarray]:
        """Values of ``tensor_names`` (node or tensor names) for an NHWC float32 batch."""
        tf = _quiet_tensorflow()
        self._check_fetches(tensor_names)
        batch = np.ascontiguousarray(nhwc, dtype=np.float32)
        fetches = [self._tensor(n) for n in tensor_names]
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
                    str(err).splitlines()[0],
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
