"""Refuse frozen graphs that would do anything but arithmetic when TensorFlow runs them.

A ``.pb`` is a program for TensorFlow: a node can read or write files (``ReadFile``,
``WriteFile``, ``Save``), print, open queues, call Python (``PyFunc``) or run functions
hidden in the graph's library. ``check_graph_ops`` walks every node a fetch would run,
through data inputs and ``^control`` inputs alike, and accepts only the pure tensor ops
that ResNet-50 v1.5 and MobileNet-v1 (and faithful re-encodings of them: fused, decomposed
or folded batch norm, channels-first layouts, Keras-style reshapes) are made of. It needs
only the GraphDef protobuf, so it runs before any graph is imported or any session exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core.errors import UserError

from .graph import node_name

# Every op here computes its outputs from its inputs and attributes alone: no state, no
# files, no randomness, no function calls. Keep it that way when adding an op.
ALLOWED_OPS = frozenset(
    # Graph plumbing.
    "Const Placeholder PlaceholderWithDefault Identity IdentityN StopGradient Snapshot".split()
    + ["NoOp"]
    # Convolution, dense layers and their biases.
    + "Conv2D DepthwiseConv2dNative MatMul BatchMatMulV2 BiasAdd BiasAddV1".split()
    # Batch norm in each encoding (fused nodes, or the Rsqrt/Mul/Sub/Add arithmetic).
    + "FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 BatchNormWithGlobalNormalization".split()
    # Activations, pools and heads.
    + "Relu Relu6 Softmax LogSoftmax MaxPool AvgPool Mean ArgMax TopKV2".split()
    # Element-wise arithmetic.
    + "Add AddV2 AddN Sub Mul RealDiv Div Neg Rsqrt Sqrt Square Reciprocal".split()
    + "Maximum Minimum Sum".split()
    # Layout and shape.
    + "Pad PadV2 Transpose Reshape Squeeze ExpandDims ConcatV2 Pack Unpack Shape".split()
    + "StridedSlice Slice Cast Fill".split()
)


def check_graph_ops(
    graph_def: Any, output_node_names: Iterable[str], source: str = "the graph"
) -> int:
    """Check every node that fetching ``output_node_names`` would run; return how many.

    Names may be node names, tensor names (``a/b:0``) or control names (``^a/b``). Raises
    UserError (one sentence naming the node and its op) for the first node that is not a
    pure tensor op or calls a function defined inside the graph, and for a missing output.
    """
    nodes = {node.name: node for node in graph_def.node}
    library_functions = {f.signature.name for f in graph_def.library.function}
    pending = [node_name(name) for name in output_node_names]
    for name in pending:
        if name not in nodes:
            raise UserError(f"{source} has no node {name!r} to run")
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        node = nodes[name]
        _check_node(node, library_functions, source)
        # Data inputs and "^name" control inputs alike. An input the graph lacks runs
        # nothing (TensorFlow cannot import such a graph); explaining it is the reader's job.
        pending.extend(p for p in map(node_name, node.input) if p in nodes)
    return len(seen)


def _check_node(node: Any, library_functions: set[str], source: str) -> None:
    if node.op in library_functions:
        raise UserError(
            f"refusing to run graph {source}: node {node.name!r} calls the function "
            f"{node.op!r} defined inside the graph, which this converter does not run"
        )
    if node.op not in ALLOWED_OPS:
        raise UserError(
            f"refusing to run graph {source}: node {node.name!r} is a {node.op} op, "
            "which is not a pure tensor op this converter allows"
        )
