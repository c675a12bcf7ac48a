"""Inference batch norm after a convolution, recognised by what it computes.

After a conv the walker collects the chain of per-channel affine ops on the data path (a
fused batch-norm node, or ``Mul``/``Add``/``Sub``/``BiasAdd``/``RealDiv`` by constants, in
any layout) and reads it as one of these encodings:

- ``fused``: one ``FusedBatchNorm``/``V2``/``V3`` node; parameters and epsilon as stored.
- ``decomposed``: ``x * scale + shift`` whose folded constants are
  ``scale = gamma * rsqrt(variance + eps)`` and ``shift = beta - mean * scale``
  (``tf.nn.batch_normalization``, TF-slim, Keras unfused with reshaped parameters). The
  four statistics and epsilon are recovered from the constants ``scale`` and ``shift`` are
  computed from, and accepted only when they reproduce ``scale`` and ``shift``.
- ``scale-shift``: ``x * scale + shift`` where the statistics are not in the file. Stored
  exactly: weight = scale, bias = shift, mean 0, variance 1, eps 0.
- ``folded-into-conv``: only a per-channel bias (``BiasAdd``/``Add``), as TF's
  ``optimize_for_inference`` leaves it. Stored as an exact identity batch norm: weight 1,
  bias = the conv bias, mean 0, variance 1, eps 0.
- ``affine``: any other chain of per-channel constant ops, composed (in float64) into one
  scale and shift stored like ``scale-shift``.

With mean 0, variance 1 and eps 0, PyTorch's inference batch norm computes
``invstd = 1 / sqrt(1 + 0) = 1``, ``alpha = weight * 1``, ``beta = bias - 0 * alpha``, so it
applies exactly ``x * weight + bias``: no rounding is added to what the file computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from core.errors import UserError

from .graph import ADD_OPS, Graph

FUSED_BN_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
_AFFINE_OPS = ("Mul", "Sub", "RealDiv", "BiasAdd", *ADD_OPS)
# How closely recovered statistics must reproduce the file's folded scale and shift: 1e-5
# relative, about 80 to 170 float32 ulps. The exporter may have folded with another rsqrt
# (TF's CPU one is not correctly rounded), in another order or in float64, so a few ulps
# is too tight; a wrong assignment (variance as gamma, another vector as the mean) misses
# by far more.
_MATCH_RTOL = 1e-5


@dataclass
class BatchNormParams:
    """An inference batch norm as PyTorch's BatchNorm2d holds it, plus where it came from."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float
    output: str  # node whose output 0 is the normalised tensor
    encoding: str  # "fused", "decomposed", ... (see above)
    tensors: dict[str, str] = field(default_factory=dict)  # role -> TF constant name


@dataclass
class _Step:
    """One per-channel affine op on the data path: ``x <kind> value``."""

    node: str
    kind: str  # "mul", "add", "sub", "div" or "fused", whichever TF op spells it
    value: np.ndarray  # per-channel vector
    source: str  # readable name of the constant operand


def per_channel(value: np.ndarray, channels: int, data_format: str) -> np.ndarray | None:
    """``value`` as a length-``channels`` vector if it broadcasts along the channel axis only."""
    shape = value.shape
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=value.dtype)
    if value.size != channels or len(shape) > 4:
        return None
    if data_format == "NCHW":
        ok = len(shape) >= 3 and shape[-3] == channels  # [C, 1, 1] or [1, C, 1, 1]
    else:
        ok = shape[-1] == channels  # [C] ... [1, 1, 1, C]
    return value.reshape(-1) if ok else None


def _affine_step(graph: Graph, node, x: str, channels: int, fmt: str) -> _Step | None:
    """``node`` as an affine step on data tensor ``x``, or None if it is something else."""
    if node.op in FUSED_BN_OPS:
        reads_x = graph.data_inputs(node)[:1] == [x]
        return _Step(node.name, "fused", np.empty(0), node.name) if reads_x else None
    if node.op not in _AFFINE_OPS:
        return None
    inputs = graph.data_inputs(node)
    dynamic = graph.dynamic_inputs(node)
    if len(inputs) != 2 or dynamic != [x]:
        return None
    const_index = 1 - inputs.index(x)
    if node.op in ("Sub", "RealDiv", "BiasAdd") and const_index != 1:
        return None  # c - x or c / x is not a per-channel affine map of x
    value, source = graph.input_value(node, const_index)
    if node.op == "BiasAdd" and value.ndim != 1:
        return None
    # BiasAdd adds a [C] vector along the channel axis of either layout; Mul/Add broadcast.
    vector = per_channel(value, channels, "NHWC" if node.op == "BiasAdd" else fmt)
    if vector is None:
        return None
    kind = {"Mul": "mul", "Sub": "sub", "RealDiv": "div"}.get(node.op, "add")
    return _Step(node.name, kind, vector, source)


def affine_chain(graph: Graph, x: str, channels: int, fmt: str) -> list[_Step]:
    """The per-channel affine ops that follow data tensor ``x``, in order."""
    steps: list[_Step] = []
    while True:
        consumers = graph.data_consumers(x)
        if len(consumers) != 1:
            return steps
        step = _affine_step(graph, consumers[0], x, channels, fmt)
        if step is None:
            return steps
        steps.append(step)
        x = consumers[0].name
        if step.kind == "fused":
            return steps  # a fused batch norm is a whole layer; what follows is the next op


def batch_norm_after(graph: Graph, conv: str, channels: int, fmt: str) -> BatchNormParams:
    """The inference batch norm (in any encoding) applied to the output of node ``conv``."""
    steps = affine_chain(graph, conv, channels, fmt)
    if not steps:
        found = graph.describe(graph.data_consumers(conv))
        raise UserError(
            f"{graph.source}: after conv {conv} expected a batch norm (a fused batch-norm op, "
            f"a per-channel multiply and add, or a per-channel bias), but found {found}"
        )
    kinds = [s.kind for s in steps]
    if kinds == ["fused"]:
        return _fused(graph, graph.nodes[steps[0].node], channels)
    if kinds == ["add"]:  # optimize_for_inference folded the batch norm into the conv
        step = steps[0]
        ones = np.ones(channels, np.float32)
        return _identity_norm(
            ones, step.value, step.node, "folded-into-conv", {"beta": step.source}
        )
    if kinds in (["mul", "add"], ["mul", "sub"]):
        return _scale_shift(graph, steps, channels, fmt)
    return _composed(graph, steps, channels)


def _fused(graph: Graph, node, channels: int) -> BatchNormParams:
    if "is_training" in node.attr and node.attr["is_training"].b:
        raise UserError(
            f"{graph.source}: batch norm {node.name} ({node.op}) is in training mode, but a "
            f"frozen inference graph was expected"
        )
    values, names = {}, {}
    for index, role in enumerate(("gamma", "beta", "moving_mean", "moving_variance"), start=1):
        value, names[role] = graph.input_value(node, index)
        values[role] = value.reshape(-1)
        if values[role].size != channels:
            raise UserError(
                f"{graph.source}: batch norm {node.name} ({node.op}) has a {role} of shape "
                f"{tuple(value.shape)} (from {names[role]}), expected {channels} channels"
            )
    return BatchNormParams(
        gamma=values["gamma"],
        beta=values["beta"],
        mean=values["moving_mean"],
        variance=values["moving_variance"],
        # 1e-4: the op's registered default
        epsilon=float(node.attr["epsilon"].f) if "epsilon" in node.attr else 1e-4,
        output=node.name,
        encoding="fused",
        tensors=names,
    )


def _identity_norm(scale, shift, output: str, encoding: str, tensors) -> BatchNormParams:
    channels = shift.size
    return BatchNormParams(
        gamma=np.asarray(scale, np.float32),
        beta=np.asarray(shift, np.float32),
        mean=np.zeros(channels, np.float32),
        variance=np.ones(channels, np.float32),
        epsilon=0.0,
        output=output,
        encoding=encoding,
        tensors=tensors,
    )


def _scale_shift(graph: Graph, steps: list[_Step], channels: int, fmt: str) -> BatchNormParams:
    mul, add = steps
    shift = -add.value if add.kind == "sub" else add.value
    recovered = _recover_statistics(graph, mul, add, shift, channels, fmt)
    if recovered is not None:
        return recovered
    tensors = {"gamma": mul.source, "beta": add.source}
    return _identity_norm(mul.value, shift, add.node, "scale-shift", tensors)


def _composed(graph: Graph, steps: list[_Step], channels: int) -> BatchNormParams:
    """Any chain of per-channel ops as one float64-composed scale and shift."""
    scale = np.ones(channels, np.float64)
    shift = np.zeros(channels, np.float64)
    for step in steps:
        v = step.value.astype(np.float64)
        if step.kind == "fused":
            bn = _fused(graph, graph.nodes[step.node], channels)
            v = bn.gamma.astype(np.float64) / np.sqrt(bn.variance.astype(np.float64) + bn.epsilon)
            shift = shift * v + (bn.beta - bn.mean.astype(np.float64) * v)
            scale = scale * v
        elif step.kind == "mul":
            scale, shift = scale * v, shift * v
        elif step.kind == "div":
            scale, shift = scale / v, shift / v
        else:
            shift = shift + v if step.kind == "add" else shift - v
    tensors = {"gamma": "+".join(s.source for s in steps)}
    return _identity_norm(scale, shift, steps[-1].node, "affine", tensors)


# ---------------------------------------------------------------------------- recovery


def _candidates(graph: Graph, tensor: str, channels: int, fmt: str, exclude=()):
    """(name, per-channel vector) and (name, scalar) leaves of a constant sub-graph."""
    vectors, scalars = [], []
    for leaf in graph.const_leaves(tensor):
        if leaf in exclude or not graph.is_float_const(leaf):
            continue
        value = graph.value(leaf)
        if value.size == 1:
            scalars.append((leaf, np.float32(value.reshape(()))))
            continue
        vector = per_channel(value, channels, fmt)
        if vector is None and value.ndim == 1 and value.size == channels:
            vector = value  # a [C] vector reshaped to [1, C, 1, 1] further down
        if vector is not None:
            vectors.append((leaf, vector.astype(np.float32)))
    return vectors, scalars


def _close(computed: np.ndarray, target: np.ndarray, magnitude: np.ndarray | None = None) -> bool:
    """Within ``_MATCH_RTOL`` of ``magnitude`` (default: target), or of an absolute floor.

    The floor, 1e-7 of the largest target (about one ulp of it), admits channels at or near
    zero, where a relative bound would ask for bit equality and TF flushes subnormals to 0.
    """
    magnitude = np.abs(target) if magnitude is None else np.abs(magnitude)
    floor = 1e-7 * max(float(np.abs(target).max()), np.finfo(np.float32).tiny)
    return bool(np.all(np.abs(computed - target) <= _MATCH_RTOL * magnitude + floor))


def _recover_statistics(graph, mul: _Step, add: _Step, shift, channels, fmt):
    """gamma/beta/mean/variance/eps from the constants behind ``scale`` and ``shift``.

    Tries every assignment of the leaf constants to the roles and keeps the first that
    reproduces the file's folded values; returns None when none does.
    """
    scale = mul.value.astype(np.float32)
    scale_tensor = _const_operand(graph, mul)
    shift_tensor = _const_operand(graph, add)
    vectors, scalars = _candidates(graph, scale_tensor, channels, fmt)
    ones = ("", np.ones(channels, np.float32))
    for (var_name, var), (gamma_name, gamma), (eps_name, eps) in _scale_assignments(
        vectors, scalars, ones
    ):
        inv = np.float32(1) / np.sqrt(var + eps, dtype=np.float32)
        if not _close((inv * gamma).astype(np.float32), scale):
            continue
        used = {var_name, gamma_name, eps_name}
        rest, _ = _candidates(graph, shift_tensor, channels, fmt, exclude=used)
        found = _shift_assignment(rest, scale, shift, channels)
        if found is None:
            continue
        (mean_name, mean), (beta_name, beta) = found
        names = {"moving_variance": var_name, "gamma": gamma_name, "epsilon": eps_name}
        names.update(moving_mean=mean_name, beta=beta_name)
        return BatchNormParams(
            gamma=gamma,
            beta=beta,
            mean=mean,
            variance=var,
            epsilon=float(eps),
            output=add.node,
            encoding="decomposed",
            tensors={k: v for k, v in names.items() if v},
        )
    return None


def _const_operand(graph: Graph, step: _Step) -> str:
    node = graph.nodes[step.node]
    return next(i for i in graph.data_inputs(node) if graph.is_constant(i))


def _scale_assignments(vectors, scalars, ones):
    """(variance, gamma, eps) candidates, most specific first."""
    eps_options = [*scalars, ("", np.float32(0))]
    for eps in eps_options:
        for var, gamma in permutations(vectors, 2):
            yield var, gamma, eps
        for var in vectors:
            yield var, ones, eps


def _shift_assignment(vectors, scale, shift, channels):
    """(mean, beta) among ``vectors`` with ``beta - mean * scale == shift``."""
    zeros = ("", np.zeros(channels, np.float32))
    options = [*permutations(vectors, 2), *((v, zeros) for v in vectors)]
    for mean, beta in options:
        product = (mean[1] * scale).astype(np.float32)
        computed = (beta[1] - product).astype(np.float32)
        magnitude = np.maximum(np.abs(product), np.abs(beta[1]))
        if _close(computed, shift.astype(np.float32), magnitude):
            return mean, beta
    return None
