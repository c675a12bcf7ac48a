"""Read a frozen TF GraphDef and answer questions about it by following its edges.

``read_frozen_graph`` opens a bare ``.pb`` or MLPerf's ``.tgz``. ``Graph`` indexes nodes and
consumers, reads attributes and folds constants: any node that does not depend on a
placeholder is evaluated once in numpy, so walkers see values rather than spellings
(``Reshape(gamma)``, ``Cast(Const)``, ``Rsqrt(var + eps) * gamma`` are all just numbers).
TensorFlow is imported lazily: ``import convert`` stays cheap for loading ``.pth`` files.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError, first_line
from core.files import GZIP_MAGIC, find_archive_member, is_archive_name

ADD_OPS = ("Add", "AddV2")
PASS_THROUGH_OPS = ("Identity", "StopGradient", "Snapshot")
# Consumers that read only a tensor's shape, not its values: the walkers step over them
# when following the data path.
IGNORED_CONSUMERS = ("Shape",)


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def node_name(tensor_or_node: str) -> str:
    """``"^a/b"``, ``"a/b:0"`` and ``"a/b"`` all name node ``a/b``."""
    return tensor_or_node.lstrip("^").split(":")[0]


def tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def read_frozen_graph(path: str | os.PathLike, archive_member: str | None = None):
    """``(GraphDef, sha256 of the file)`` from a ``.pb`` or a member of a ``.tgz``.

    The file is read once, so the digest describes exactly the bytes that were parsed.
    Raises UserError (one sentence) for a missing, truncated or non-GraphDef file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path} ({err.strerror or err})") from None
    digest = hashlib.sha256(data).hexdigest()
    source = str(path)
    if is_archive_name(path.name) or data[:2] == GZIP_MAGIC:  # a .tgz under another name too
        data, member = _archive_member_bytes(data, path, archive_member)
        source = f"{path}:{member}"
    return _parse_graph_def(data, source), digest


def read_graph_def(path: str | os.PathLike, archive_member: str | None = None) -> Any:
    """The ``GraphDef`` alone: see ``read_frozen_graph``."""
    return read_frozen_graph(path, archive_member)[0]


def _archive_member_bytes(data: bytes, path: Path, member: str | None) -> tuple[bytes, str]:
    """The frozen-graph member of a tar archive held in memory (the fetcher's rule)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            if member is None:  # no MLPerf archive for this model: take its only .pb
                graphs = [m.name for m in archive.getmembers() if m.name.endswith(".pb")]
                if len(graphs) != 1:
                    raise UserError(f"{path} holds {len(graphs)} .pb files, expected one")
                member = graphs[0]
            info = find_archive_member(archive, posixpath.normpath(member), path)
            return archive.extractfile(info).read(), info.name
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise UserError(
            f"{path} is not a readable tar archive ({err}); the download may be truncated"
        ) from None


def _parse_graph_def(data: bytes, source: str) -> Any:
    from google.protobuf.message import DecodeError

    graph_def = _quiet_tensorflow().compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as err:
        raise UserError(f"{source} is not a TensorFlow GraphDef or is truncated ({err})") from None
    if not graph_def.node or not all(n.name and n.op for n in graph_def.node):
        raise UserError(f"{source} is not a TensorFlow frozen graph (it holds no usable nodes)")
    check_importable(graph_def, source)
    return graph_def


def check_importable(graph_def: Any, source: str) -> None:
    """UserError (naming the node) unless TensorFlow can import every node of the graph.

    TensorFlow imports a graph whole, nodes that no fetch runs included, and fails on a
    repeated node name (ValueError) or an op type it does not define (NotFoundError); the
    indexes here would silently keep one of two same-named nodes.
    """
    from tensorflow.python.framework import op_def_registry

    seen: set[str] = set()
    for node in graph_def.node:
        if node.name in seen:
            raise UserError(
                f"{source} is not a usable frozen graph: it defines node {node.name!r} twice, "
                f"and node names must be unique"
            )
        seen.add(node.name)
    functions = {f.signature.name for f in graph_def.library.function}
    for node in graph_def.node:
        if node.op not in functions and op_def_registry.get(node.op) is None:
            version = _quiet_tensorflow().__version__
            raise UserError(
                f"{source} cannot be loaded: node {node.name!r} is a {node.op} op, which "
                f"TensorFlow {version} does not define (a custom op, or one of a newer version)"
            )


def _np_dtype(attr_type: int) -> np.dtype:
    """The numpy dtype of a TF DataType; TypeError for one numpy cannot hold (a resource, a
    number no TF version defines)."""
    tf = _quiet_tensorflow()
    try:
        return np.dtype(tf.dtypes.as_dtype(attr_type).as_numpy_dtype)
    except (KeyError, TypeError):
        raise TypeError(f"TensorFlow dtype {attr_type} has no numpy equivalent") from None


def _binary(fn):
    return lambda node, args: fn(args[0], args[1])


def _reciprocal(x: np.ndarray, root: bool = False) -> np.ndarray:
    """``1 / x`` (``1 / sqrt(x)`` with ``root``) in x's own dtype, as TF computes it."""
    return (np.ones((), x.dtype) / (np.sqrt(x) if root else x)).astype(x.dtype)


def _squeeze(node, args):
    dims = list(node.attr["squeeze_dims"].list.i) if "squeeze_dims" in node.attr else []
    return np.squeeze(args[0], axis=tuple(dims)) if dims else np.squeeze(args[0])


def _int_list(value: np.ndarray) -> list[int]:
    return value.astype(np.int64).tolist()


# Pure functions of their inputs, evaluated in numpy when every input is a constant. float32
# elementwise arithmetic in numpy rounds exactly as TF's does (IEEE single precision).
_FOLDERS = {
    "Mul": _binary(np.multiply),
    "Add": _binary(np.add),
    "AddV2": _binary(np.add),
    "Sub": _binary(np.subtract),
    "RealDiv": _binary(np.divide),
    "Maximum": _binary(np.maximum),
    "Minimum": _binary(np.minimum),
    "Neg": lambda node, args: np.negative(args[0]),
    "Square": lambda node, args: np.square(args[0]),
    "Sqrt": lambda node, args: np.sqrt(args[0]),
    "Rsqrt": lambda node, args: _reciprocal(args[0], root=True),
    "Reciprocal": lambda node, args: _reciprocal(args[0]),
    "Reshape": lambda node, args: args[0].reshape(_int_list(args[1])),
    "ExpandDims": lambda node, args: np.expand_dims(args[0], int(args[1].reshape(-1)[0])),
    "Squeeze": _squeeze,
    "Cast": lambda node, args: args[0].astype(_np_dtype(node.attr["DstT"].type)),
    "ConcatV2": lambda node, args: np.concatenate(args[:-1], axis=int(args[-1])),
    "Pack": lambda node, args: np.stack(
        args, axis=node.attr["axis"].i if "axis" in node.attr else 0
    ),
    "Transpose": lambda node, args: np.transpose(args[0], _int_list(args[1])),
}
FOLDABLE_OPS = ("Const", *PASS_THROUGH_OPS, *_FOLDERS)


class Graph:
    """Index over a GraphDef: nodes by name, consumers, folded constants, attributes."""

    def __init__(self, graph_def: Any, source: str = "the graph"):
        self.graph_def = graph_def
        self.source = source
        self.nodes = {n.name: n for n in graph_def.node}
        self._consumers: dict[str, list[str]] = defaultdict(list)
        for n in graph_def.node:
            for inp in n.input:
                if not inp.startswith("^"):
                    self._consumers[node_name(inp)].append(n.name)
        self._dynamic = self._depends_on_placeholders()
        self._values: dict[str, np.ndarray] = {}
        self.used_consts: set[str] = set()

    def _depends_on_placeholders(self) -> set[str]:
        """Names of the nodes whose value depends on a fed input (forward closure)."""
        dynamic: set[str] = set()
        stack = [n.name for n in self.graph_def.node if n.op == "Placeholder"]
        while stack:
            name = stack.pop()
            if name in dynamic:
                continue
            dynamic.add(name)
            stack.extend(self._consumers.get(name, []))
        return dynamic

    # ------------------------------------------------------------------ structure

    def data_inputs(self, node) -> list[str]:
        return [node_name(i) for i in node.input if not i.startswith("^")]

    def is_constant(self, name: str) -> bool:
        """True when ``name``'s value does not depend on any placeholder."""
        return node_name(name) not in self._dynamic

    def dynamic_inputs(self, node) -> list[str]:
        """The data inputs of ``node`` that depend on the fed input."""
        return [i for i in self.data_inputs(node) if not self.is_constant(i)]

    def constant_inputs(self, node) -> list[int]:
        """Indices of the data inputs of ``node`` that are constants."""
        return [k for k, i in enumerate(self.data_inputs(node)) if self.is_constant(i)]

    def data_consumers(self, name: str) -> list:
        """Nodes that read ``name``'s values, looking through (and skipping) PASS_THROUGH_OPS
        nodes; the IGNORED_CONSUMERS, which read only its shape, are left out."""
        result = []
        for c in self._consumers.get(node_name(name), []):
            consumer = self.nodes[c]
            if consumer.op in PASS_THROUGH_OPS:
                result.extend(self.data_consumers(consumer.name))
            elif consumer.op not in IGNORED_CONSUMERS:
                result.append(consumer)
        return result

    def describe(self, nodes) -> str:
        return ", ".join(f"{c.name} ({c.op})" for c in nodes) or "nothing"

    def next_op(self, name: str, expected: tuple[str, ...], what: str):
        """The single consumer of ``name``, which must be one of the ``expected`` op types."""
        consumers = self.data_consumers(name)
        if len(consumers) != 1 or consumers[0].op not in expected:
            raise UserError(
                f"{self.source}: expected {what} ({'/'.join(expected)}) after {node_name(name)}, "
                f"found {self.describe(consumers)}"
            )
        return consumers[0]

    def output_identity(self, name: str) -> str:
        """The name of an Identity that re-exports ``name`` (e.g. ``final_dense``), else it."""
        for c in self._consumers.get(node_name(name), []):
            if self.nodes[c].op == "Identity":
                return c
        return node_name(name)

    # ------------------------------------------------------------------ constants

    def value(self, name: str, *, wanted_by: str | None = None) -> np.ndarray:
        """The value of a constant tensor, folding any arithmetic on constants.

        Every ``Const`` it is computed from is marked as used. UserError (naming the node)
        when the tensor depends on the input or uses an op that cannot be folded.
        """
        name_ = node_name(name)
        if name_ not in self.nodes:
            by = f" (read by {wanted_by})" if wanted_by else ""
            raise UserError(f"{self.source} has no tensor {name_}{by}")
        node = self.nodes[name_]
        by = f" read by {wanted_by}" if wanted_by else ""
        if not self.is_constant(name_):
            raise UserError(
                f"{self.source}: tensor {name_}{by} depends on the input, where a frozen "
                f"constant was expected"
            )
        if ":" in name and not name.endswith(":0"):
            raise UserError(f"{self.source}: tensor {name}{by} is not a foldable constant")
        if node.op not in FOLDABLE_OPS:
            raise UserError(
                f"{self.source}: tensor {name_}{by} is computed by a {node.op}, which is not a "
                f"frozen constant or arithmetic on constants"
            )
        return self._fold(node)

    def _fold(self, node) -> np.ndarray:
        if node.name in self._values:
            return self._values[node.name]
        if node.op == "Const":
            tf = _quiet_tensorflow()
            try:
                result = np.array(tf.make_ndarray(node.attr["value"].tensor))
            except (KeyError, TypeError, ValueError) as err:  # e.g. fewer bytes than its shape
                raise UserError(
                    f"{self.source}: constant {node.name} cannot be read "
                    f"({first_line(err)}); the file is damaged"
                ) from None
            self.used_consts.add(node.name)
        else:
            args = [self.value(i, wanted_by=node.name) for i in self.data_inputs(node)]
            if node.op in PASS_THROUGH_OPS:
                result = args[0]
            else:
                try:
                    result = np.asarray(_FOLDERS[node.op](node, args))
                except (ValueError, TypeError, IndexError) as err:
                    raise UserError(
                        f"{self.source}: cannot evaluate constant {node.name} ({node.op}): {err}"
                    ) from None
        result.setflags(write=False)
        self._values[node.name] = result
        return result

    def const_leaves(self, name: str) -> list[str]:
        """The ``Const`` nodes a constant tensor is computed from, in input order."""
        leaves: list[str] = []
        stack = [node_name(name)]
        seen: set[str] = set()
        while stack:
            current = stack.pop()
            if current in seen or current not in self.nodes:
                continue
            seen.add(current)
            node = self.nodes[current]
            if node.op == "Const":
                leaves.append(current)
            else:
                stack.extend(reversed(self.data_inputs(node)))
        return leaves

    def source_of(self, name: str) -> str:
        """A readable name for a constant: its only floating-point Const, else the tensor."""
        floats = [c for c in self.const_leaves(name) if self.is_float_const(c)]
        return floats[0] if len(floats) == 1 else node_name(name)

    def input_value(self, node, index: int) -> tuple[np.ndarray, str]:
        """Value and readable source name of input ``index`` of ``node``."""
        inputs = self.data_inputs(node)
        if index >= len(inputs):
            raise UserError(f"{self.source}: node {node.name} ({node.op}) has no input {index}")
        value = self.value(inputs[index], wanted_by=node.name)
        return value, self.source_of(inputs[index])

    def is_float_const(self, name: str) -> bool:
        node = self.nodes[name]
        if node.op != "Const":
            return False
        try:
            return _np_dtype(node.attr["dtype"].type).kind == "f"
        except TypeError:  # not a number at all; reading it, if needed, names the node
            return False

    def weight_consts(self) -> list[str]:
        """Names of all floating-point, non-scalar Const nodes: the graph's weights."""
        return [
            n.name
            for n in self.graph_def.node
            if self.is_float_const(n.name) and n.attr["value"].tensor.tensor_shape.dim
        ]

    # ------------------------------------------------------------------ attributes

    @staticmethod
    def attr_ints(node, key: str) -> list[int]:
        return list(node.attr[key].list.i) if key in node.attr else []

    @staticmethod
    def attr_str(node, key: str, default: str = "") -> str:
        return node.attr[key].s.decode() if key in node.attr else default
