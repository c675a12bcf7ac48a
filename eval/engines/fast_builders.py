"""Faster float32 forms of a model (frozen TorchScript, inductor, oneDNN Graph), and the
check that admits one: a fast engine runs only if it matches eager on a sample, so a builder
that miscompiles falls back instead of changing the results.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


class _Engine(Protocol):
    """What the check needs of an ``eval.engines.PreparedEngine`` (that module imports this
    one, so it is not imported here)."""

    device: torch.device
    channels_last: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def build_torchscript_freeze(module: nn.Module, example: torch.Tensor) -> Forward:
    """Trace at the example's shape, then freeze: constants, conv+BN folding, no Python."""
    with torch.no_grad(), warnings.catch_warnings():
        # Shape arithmetic in the TF-SAME padding becomes constants: right for a fixed shape.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 marks jit.freeze deprecated; the CPU default (its oneDNN-fused form)
        # is level with or ahead of inductor (docs/measurements.md, Inference table).
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    # The profiling executor optimises on the first calls: do them now, inside setup time.
    with torch.inference_mode():
        for _ in range(2):
            frozen(example)
    return frozen


def build_inductor(module: nn.Module, example: torch.Tensor) -> Forward:
    """``torch.compile`` (inductor, static shapes) with freezing; needs a C++ compiler.
    The graph compiles on the first call, so the warm-up runs inside the freezing patch."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, dynamic=False)
    with inductor_config.patch(freezing=True), torch.inference_mode():
        for _ in range(2):
            compiled(example)
    return compiled


def build_torchscript_onednn(module: nn.Module, example: torch.Tensor) -> Forward:
    """``build_torchscript_freeze`` with TorchScript's oneDNN Graph fuser (LLGA) on; the
    switch is process-wide, so it is on only while this engine runs."""
    frozen = _ONEDNN_FUSION.run(lambda: build_torchscript_freeze(module, example))
    return lambda images: _ONEDNN_FUSION.run(lambda: frozen(images))


class _ProcessSwitch:
    """TorchScript's process-wide oneDNN fusion flag, on while any call needs it: worker
    threads run calls concurrently, so it is restored only when the last one ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before = False

    def run(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self._lock:
            if self._users == 0:
                self._before = torch.jit.onednn_fusion_enabled()
                torch.jit.enable_onednn_fusion(True)
            self._users += 1
        try:
            return call()
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    torch.jit.enable_onednn_fusion(self._before)


_ONEDNN_FUSION = _ProcessSwitch()


FAST_BUILDERS: dict[str, Callable[[nn.Module, torch.Tensor], Forward]] = {
    "torchscript-freeze": build_torchscript_freeze,
    "inductor": build_inductor,
    "torchscript-onednn": build_torchscript_onednn,
}
# "fast" tries these in order: the first that builds and matches eager runs.
FAST_BUILDER_ORDER = ("torchscript-onednn", "inductor", "torchscript-freeze")
# The oneDNN Graph fuser is CPU-only: on CUDA, inductor (Triton kernels) leads.
CUDA_FAST_BUILDER_ORDER = ("inductor", "torchscript-freeze")


def compare_logits(
    fast: torch.Tensor, eager: torch.Tensor, atol: float = 1e-4, topk: int = 5
) -> str | None:
    """Return None if ``fast`` matches ``eager``, else one sentence saying how it differs.

    Match (float32 noise is ~1e-6): max |difference| <= ``atol`` scaled by the logit
    magnitude when that exceeds 1 (float32 rounding grows with the values, as in convert's
    TF check), and per row the same top-1 class and the same set of top-k classes.
    """
    if fast.shape != eager.shape:
        return f"logits shape {tuple(fast.shape)} differs from eager {tuple(eager.shape)}"
    fast, eager = fast.float().cpu(), eager.float().cpu()
    if fast.numel() == 0:
        return None
    max_diff = (fast - eager).abs().max().item()
    allowed = atol * max(1.0, eager.abs().max().item())
    if not max_diff <= allowed:  # also catches NaN
        return f"max |logit difference| {max_diff:.3g} exceeds {allowed:.3g}"
    if not torch.equal(fast.argmax(1), eager.argmax(1)):
        return "top-1 classes differ from eager"
    k = min(topk, fast.shape[1])
    fast_top = fast.topk(k, dim=1).indices.sort(dim=1).values
    eager_top = eager.topk(k, dim=1).indices.sort(dim=1).values
    if not torch.equal(fast_top, eager_top):
        return f"top-{k} classes differ from eager"
    return None


def check_against_eager(
    prepared: _Engine, eager_module: nn.Module, sample: torch.Tensor
) -> str | None:
    """Run ``sample`` through both; None if they agree (``compare_logits``), else why not."""
    try:
        with torch.inference_mode():
            eager_input = sample.to(prepared.device, torch.float32)
            if prepared.channels_last:
                eager_input = eager_input.contiguous(memory_format=torch.channels_last)
            expected = eager_module.eval()(eager_input)
        return compare_logits(prepared(sample), expected)
    except Exception as err:
        return f"it raised {type(err).__name__}: {err}"
