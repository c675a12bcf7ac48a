"""Read a frozen TF GraphDef and answer questions about it by following its edges.

``read_graph_def`` opens a bare ``.pb`` or MLPerf's ``.tgz``; ``Graph`` indexes the nodes,
resolves constants through ``Identity`` (``<name>/read``) nodes, reads attributes and
recognises batch norm in either form (one fused node, or TF's decomposed
``Rsqrt``/``Mul``/``Sub``/``Add`` chain). TensorFlow is imported lazily so that
``import convert`` stays cheap for people who only load ``.pth`` files.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.files import find_archive_member

FUSED_BN_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
ADD_OPS = ("Add", "AddV2")
PASS_THROUGH_OPS = ("Identity", "StopGradient", "Snapshot")
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def node_name(tensor_or_node: str) -> str:
    """``"^a/b"``, ``"a/b:0"`` and ``"a/b"`` all name node ``a/b``."""
    return tensor_or_node.lstrip("^").split(":")[0]


def tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def _is_archive(path: Path) -> bool:
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"  # gzip magic: a .tgz under another name


def _read_archive_member(path: Path, member: str | None) -> tuple[bytes, str]:
    """Bytes of the frozen-graph member of a tar archive (the same rule as the fetcher)."""
    try:
        with tarfile.open(path, "r:*") as archive:
            if member is None:  # no MLPerf archive for this model: take its only .pb
                graphs = [m.name for m in archive.getmembers() if m.name.endswith(".pb")]
                if len(graphs) != 1:
                    raise UserError(f"{path} holds {len(graphs)} .pb files, expected one")
                member = posixpath.normpath(graphs[0])
            info = find_archive_member(archive, member, path)
            return archive.extractfile(info).read(), info.name
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise UserError(
            f"{path} is not a readable tar archive ({err}); the download may be truncated"
        ) from None


def read_graph_def(path: str | os.PathLike, archive_member: str | None = None) -> Any:
    """Parse a frozen ``GraphDef`` from a ``.pb`` file or from a member of a ``.tgz``.

    Raises UserError (one sentence) for a missing, truncated or non-GraphDef file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    source = str(path)
    if _is_archive(path):
        data, member = _read_archive_member(path, archive_member)
        source = f"{path}:{member}"
    else:
        data = path.read_bytes()
    tf = _quiet_tensorflow()
    from google.protobuf.message import DecodeError

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as err:
        raise UserError(f"{source} is not a TensorFlow GraphDef or is truncated ({err})") from None
    if not graph_def.node or not all(n.name and n.op for n in graph_def.node):
        raise UserError(f"{source} is not a TensorFlow frozen graph (it holds no usable nodes)")
    return graph_def


@dataclass
class BatchNormParams:
    """Inference batch norm read from the graph, in either encoding."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float
    output: str  # node whose output 0 is the normalised tensor
    form: str  # "fused" or "decomposed"
    tensors: dict[str, str] = field(default_factory=dict)  # role -> Const node name


class Graph:
    """Index over a GraphDef: nodes by name, consumers, constants through Identity."""

    def __init__(self, graph_def: Any, source: str = "the graph"):
        self.graph_def = graph_def
        self.source = source
        self.nodes = {n.name: n for n in graph_def.node}
        self._consumers: dict[str, list[str]] = defaultdict(list)
        for n in graph_def.node:
            for inp in n.input:
                if not inp.startswith("^"):
                    self._consumers[node_name(inp)].append(n.name)
        self.used_consts: set[str] = set()

    # ------------------------------------------------------------------ structure

    def node(self, name: str, *, wanted_by: str | None = None):
        name = node_name(name)
        try:
            return self.nodes[name]
        except KeyError:
            by = f" (read by {wanted_by})" if wanted_by else ""
            raise UserError(f"{self.source} has no tensor {name}{by}") from None

    def has(self, name: str) -> bool:
        return node_name(name) in self.nodes

    def data_inputs(self, node) -> list[str]:
        return [node_name(i) for i in node.input if not i.startswith("^")]

    def input_node(self, node, index: int):
        """The producer of input ``index`` of ``node``, looking through Identity nodes."""
        inputs = self.data_inputs(node)
        if index >= len(inputs):
            raise UserError(f"{self.source}: node {node.name} has no input {index}")
        producer = self.node(inputs[index], wanted_by=node.name)
        while producer.op in PASS_THROUGH_OPS:
            producer = self.node(self.data_inputs(producer)[0], wanted_by=producer.name)
        return producer

    def consumers(self, name: str) -> list:
        """Nodes that read ``name``, looking through Identity nodes (which are skipped)."""
        result = []
        for c in self._consumers.get(node_name(name), []):
            consumer = self.nodes[c]
            if consumer.op in PASS_THROUGH_OPS:
                result.extend(self.consumers(consumer.name))
            else:
                result.append(consumer)
        return result

    def next_op(self, name: str, expected: tuple[str, ...], what: str):
        """The single consumer of ``name``, which must be one of the ``expected`` op types."""
        consumers = self.consumers(name)
        if len(consumers) != 1 or consumers[0].op not in expected:
            found = ", ".join(f"{c.name} ({c.op})" for c in consumers) or "nothing"
            raise UserError(
                f"{self.source}: expected {what} ({'/'.join(expected)}) after {node_name(name)}, "
                f"found {found}"
            )
        return consumers[0]

    def output_identity(self, name: str) -> str:
        """The name of an Identity that re-exports ``name`` (e.g. ``final_dense``), else it."""
        for c in self._consumers.get(node_name(name), []):
            if self.nodes[c].op == "Identity":
                return c
        return node_name(name)

    # ------------------------------------------------------------------ constants

    def const(self, name: str, *, wanted_by: str | None = None) -> np.ndarray:
        """Value of a Const, following Identity and Reshape/ExpandDims of constants.

        (Keras reshapes per-channel vectors to [1, C, 1, 1] in channels-first graphs.)
        The underlying Const is marked as used.
        """
        node = self.node(name, wanted_by=wanted_by)
        if node.op in PASS_THROUGH_OPS:
            return self.const(self.data_inputs(node)[0], wanted_by=node.name)
        if node.op in ("Reshape", "ExpandDims"):
            value = self.const(self.data_inputs(node)[0], wanted_by=node.name)
            arg = self.const(self.data_inputs(node)[1], wanted_by=node.name)
            if node.op == "Reshape":
                return value.reshape(arg.astype(np.int64).tolist())
            return np.expand_dims(value, int(arg.reshape(-1)[0]))
        if node.op != "Const":
            by = f" read by {wanted_by}" if wanted_by else ""
            raise UserError(
                f"{self.source}: tensor {node.name}{by} is a {node.op}, not a frozen constant"
            )
        tf = _quiet_tensorflow()
        self.used_consts.add(node.name)
        return np.array(tf.make_ndarray(node.attr["value"].tensor))

    def const_node_name(self, name: str) -> str:
        """The Const behind ``name`` (through Identity/Reshape/ExpandDims)."""
        node = self.node(name)
        while node.op in (*PASS_THROUGH_OPS, "Reshape", "ExpandDims"):
            node = self.node(self.data_inputs(node)[0])
        return node.name

    def input_const(self, node, index: int) -> tuple[np.ndarray, str]:
        """Value and Const name of input ``index`` of ``node``."""
        inp = self.data_inputs(node)[index]
        value = self.const(inp, wanted_by=node.name)
        return value, self.const_node_name(inp)

    def weight_consts(self) -> list[str]:
        """Names of all floating-point, non-scalar Const nodes: the graph's weights."""
        tf = _quiet_tensorflow()
        names = []
        for n in self.graph_def.node:
            if n.op != "Const":
                continue
            dtype = tf.dtypes.as_dtype(n.attr["dtype"].type)
            dims = n.attr["value"].tensor.tensor_shape.dim
            if dtype.is_floating and len(dims) > 0:
                names.append(n.name)
        return names

    # ------------------------------------------------------------------ attributes

    @staticmethod
    def attr_ints(node, key: str) -> list[int]:
        return list(node.attr[key].list.i) if key in node.attr else []

    @staticmethod
    def attr_str(node, key: str, default: str = "") -> str:
        return node.attr[key].s.decode() if key in node.attr else default

    @staticmethod
    def attr_float(node, key: str) -> float | None:
        return float(node.attr[key].f) if key in node.attr else None

    # ------------------------------------------------------------------ batch norm

    def batch_norm_after(self, name: str) -> BatchNormParams:
        """The inference batch norm applied to the output of node ``name``."""
        consumer = self.next_op(name, (*FUSED_BN_OPS, "Mul"), "a batch norm")
        if consumer.op in FUSED_BN_OPS:
            return self._fused_bn(consumer)
        return self._decomposed_bn(consumer, node_name(name))

    def _fused_bn(self, node) -> BatchNormParams:
        if node.attr["is_training"].b if "is_training" in node.attr else False:
            raise UserError(f"{self.source}: batch norm {node.name} is in training mode")
        roles = ("gamma", "beta", "moving_mean", "moving_variance")
        values, names = {}, {}
        for index, role in enumerate(roles, start=1):
            values[role], names[role] = self.input_const(node, index)
        eps = self.attr_float(node, "epsilon")
        if eps is None:
            eps = 1e-3  # FusedBatchNorm's attr default, used when the file omits it
        return BatchNormParams(
            gamma=values["gamma"].reshape(-1),
            beta=values["beta"].reshape(-1),
            mean=values["moving_mean"].reshape(-1),
            variance=values["moving_variance"].reshape(-1),
            epsilon=eps,
            output=node.name,
            form="fused",
            tensors=names,
        )

    def _decomposed_bn(self, mul_x, x_name: str) -> BatchNormParams:
        """``x * scale + (beta - mean * scale)``, ``scale = rsqrt(var + eps) * gamma``."""
        where = f"decomposed batch norm at {mul_x.name}"
        others = [i for i in self.data_inputs(mul_x) if i != x_name]
        if len(others) != 1:
            raise UserError(f"{self.source}: cannot read the {where}: unexpected inputs")
        scale_node = self.node(others[0], wanted_by=mul_x.name)
        names: dict[str, str] = {}
        values: dict[str, np.ndarray] = {}
        if scale_node.op == "Mul":
            rsqrt, gamma_input = None, None
            for i in range(2):
                producer = self.input_node(scale_node, i)
                if producer.op == "Rsqrt":
                    rsqrt = producer
                else:
                    gamma_input = i
            if rsqrt is None or gamma_input is None:
                raise UserError(f"{self.source}: the {where} has no Rsqrt(variance + eps)")
            values["gamma"], names["gamma"] = self.input_const(scale_node, gamma_input)
        elif scale_node.op == "Rsqrt":
            rsqrt = scale_node
        else:
            raise UserError(f"{self.source}: the {where} scales by a {scale_node.op}")
        var_add = self.input_node(rsqrt, 0)
        if var_add.op not in ADD_OPS:
            raise UserError(f"{self.source}: the {where} has no variance + eps Add")
        a, a_name = self.input_const(var_add, 0)
        b, b_name = self.input_const(var_add, 1)
        (eps, eps_name), (var, var_name) = sorted(
            [(a, a_name), (b, b_name)], key=lambda item: item[0].size
        )
        if eps.size != 1:
            raise UserError(f"{self.source}: the {where} has no scalar epsilon in {var_add.name}")
        values["moving_variance"], names["moving_variance"] = var, var_name
        names["epsilon"] = eps_name

        add_shift = self.next_op(mul_x.name, ADD_OPS, f"the shift Add of the {where}")
        shift_inputs = [i for i in self.data_inputs(add_shift) if i != mul_x.name]
        sub = self.node(shift_inputs[0], wanted_by=add_shift.name) if shift_inputs else None
        if sub is None or sub.op != "Sub":
            raise UserError(f"{self.source}: the {where} has no beta - mean * scale Sub")
        values["beta"], names["beta"] = self.input_const(sub, 0)
        mean_mul = self.input_node(sub, 1)
        if mean_mul.op != "Mul":
            raise UserError(f"{self.source}: the {where} has no mean * scale Mul")
        mean_index = [i for i in range(2) if self.input_node(mean_mul, i).name != scale_node.name]
        if len(mean_index) != 1:
            raise UserError(f"{self.source}: the {where} has no moving mean")
        values["moving_mean"], names["moving_mean"] = self.input_const(mean_mul, mean_index[0])
        channels = values["moving_variance"].size
        gamma = values.get("gamma", np.ones(channels, np.float32))
        return BatchNormParams(
            gamma=gamma.reshape(-1),
            beta=values["beta"].reshape(-1),
            mean=values["moving_mean"].reshape(-1),
            variance=values["moving_variance"].reshape(-1),
            epsilon=float(eps.reshape(())),
            output=add_shift.name,
            form="decomposed",
            tensors=names,
        )
