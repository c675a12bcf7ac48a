"""Inference engines for the converted models: plain eager PyTorch or a faster frozen graph.

``prepare_engine(module, "auto"|"eager"|"fast", ...)`` returns a ``PreparedEngine``: a
callable ``NCHW float32 -> logits [N, classes]`` that records which engine really runs
(``.name``), what it cost to build (``.setup_seconds``) and why (``.notes``).

The fast path stays float32 and exact to float32 noise. Candidates, tried in order
(``FAST_BUILDER_ORDER``; the first that builds and matches eager runs):

- "inductor": ``torch.compile`` with inductor freezing (weights become constants, conv +
  batch norm folded, oneDNN convolutions with fused ReLU/ReLU6, generated C++ for the
  rest). Fastest measured on this project's 2-core AVX2 CPU at batch 32
  (benchmarks/bench_inference.py): MobileNet 1.5x and ResNet-50 1.3x TensorFlow, 1.3x and
  1.15x channels-last eager. Needs a C++ compiler; builds in ~15-60 s (the low end when
  inductor's on-disk cache is warm).
- "torchscript-freeze": ``torch.jit.trace`` + ``torch.jit.freeze`` (also folds conv+BN);
  builds in ~10 s, slower than inductor but faster than eager.

Measured and dropped: ``torch.jit.optimize_for_inference`` (MKLDNN layouts: ResNet-50
8 img/s vs 12.7 for inductor), inductor max-autotune and C++ wrapper (no gain at batch 32),
NCHW-contiguous layouts (channels-last was faster for every candidate).
Models run channels-last (an NHWC cache viewed as NCHW is already in that layout). Every
fast engine is checked against the eager module on a sample batch; a build failure or a
disagreement moves on to the next candidate, and finally to eager, with the reasons in
``.notes``.

A fast engine always runs at the batch size it was built for, on one staging tensor: a
smaller (last) batch is zero-padded and the result sliced, a larger one is split, so no
call ever triggers a re-trace or a recompile.

"auto" rule: the fast path pays off only when the images it saves time on outweigh its
build cost. With ``num_images`` known, "auto" picks fast when
``num_images >= AUTO_MIN_IMAGES`` (break-even from measured setup cost and speed-up, see the
constant); unknown ``num_images`` (an open-ended run) counts as large.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

ENGINE_CHOICES = ("auto", "eager", "fast")

# Break-even for "auto". Measured here (2 shared cores, fp32, batch 32, warm inductor disk
# cache): the inductor build costs about 15 s (MobileNet) and 26 s (ResNet-50), up to
# 36-60 s on a cold cache, and saves about 5 ms per image on MobileNet (channels-last eager
# 51 img/s vs 68) and 11 ms on ResNet-50 (12.3 vs 14.2): 26 s / 5 ms = ~5000 images.
AUTO_MIN_IMAGES = 5000

# Exactness budget of a fast engine against the eager module (float32 noise is ~1e-6).
VERIFY_ATOL = 1e-4
VERIFY_TOPK = 5


@dataclass
class PreparedEngine:
    """A ready-to-run inference callable: ``engine(nchw_float32) -> logits``.

    ``name`` is the engine that actually runs ("eager" or "fast:torchscript-freeze"),
    ``setup_seconds`` its one-time cost, ``notes`` why it was chosen or why it fell back.
    """

    name: str
    setup_seconds: float
    device: torch.device
    batch_size: int
    channels_last: bool
    forward: Callable[[torch.Tensor], torch.Tensor]
    # Fast engines see one input tensor only: a batch_size-row buffer each call copies into
    # (a few ms). Same shape, strides and tensor kind every time, so nothing is re-traced
    # or recompiled (torch.compile guards would see a new padded tensor or an
    # inference-mode tensor as a new input). Not re-entrant: one call at a time.
    staging: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_fast(self) -> bool:
        return self.name.startswith("fast")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(images.shape)}")
        images = images.to(self.device, torch.float32, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.staging is None:
                return self.forward(images)
            if images.shape[1:] != self.staging.shape[1:]:
                raise ValueError(
                    f"this engine was built for images of shape {tuple(self.staging.shape[1:])},"
                    f" got {tuple(images.shape[1:])}"
                )
            return torch.cat(
                [self._run_staged(chunk) for chunk in images.split(self.batch_size)], dim=0
            )

    def _run_staged(self, chunk: torch.Tensor) -> torch.Tensor:
        """Run at most ``batch_size`` rows through the staging buffer (zero-padded)."""
        rows = chunk.shape[0]
        self.staging[:rows].copy_(chunk)
        if rows < self.batch_size:
            self.staging[rows:].zero_()
        return self.forward(self.staging)[:rows].clone()


def configure_threads() -> int:
    """Use every core this process may run on for intra-op work; return that count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    try:
        # Inter-op threads only matter for forked graphs; one is enough and it can only be
        # set before the first parallel region, so a later call is silently skipped.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return cores


def configure_cuda_exactness() -> None:
    """Keep CUDA float32 really float32: TF32 off (it drifts logits); cudnn autotune is fine."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def choose_engine(engine: str, num_images: int | None) -> str:
    """Resolve ``engine`` to "eager", "fast" or "fast:<builder>" (see the module docstring).

    "auto" becomes "fast" unless ``num_images`` is known and below ``AUTO_MIN_IMAGES``.
    """
    if engine.startswith("fast:"):
        if engine.removeprefix("fast:") not in FAST_BUILDERS:
            known = ", ".join(f"fast:{name}" for name in FAST_BUILDERS)
            raise ValueError(f"unknown fast engine {engine!r}: expected one of {known}")
        return engine
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINE_CHOICES)}")
    if engine != "auto":
        return engine
    if num_images is not None and num_images < AUTO_MIN_IMAGES:
        return "eager"
    return "fast"


def _example_batch(batch_size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    # Deterministic, in the value range of both recipes' inputs (vgg is roughly +-128).
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch_size, 3, 224, 224, generator=generator).mul_(50.0).to(device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    return example


def build_torchscript_freeze(
    module: nn.Module, example: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Trace at the example's shape, then freeze: constants, conv+BN folding, no Python."""
    with torch.no_grad(), warnings.catch_warnings():
        # Shape arithmetic in the TF-SAME padding becomes constants: right for a fixed shape.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 marks jit.freeze deprecated; it still measured fastest here (see above).
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    # The profiling executor optimises on the first calls: do them now, inside setup time.
    with torch.inference_mode():
        for _ in range(2):
            frozen(example)
    return frozen


def build_inductor(
    module: nn.Module, example: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` (inductor, static shapes) with freezing: folded, fused C++ kernels.

    Freezing must be on while the graph compiles, which happens on the first call: that is
    why the warm-up runs inside the config patch. Needs a working C++ compiler.
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, dynamic=False)
    with inductor_config.patch(freezing=True), torch.inference_mode():
        for _ in range(2):
            compiled(example)
    return compiled


FAST_BUILDERS: dict[str, Callable[[nn.Module, torch.Tensor], Callable]] = {
    "torchscript-freeze": build_torchscript_freeze,
    "inductor": build_inductor,
}
# "fast" tries these in order: the first that builds and matches eager runs.
FAST_BUILDER_ORDER = ("inductor", "torchscript-freeze")


def _eager_engine(
    module: nn.Module,
    device: torch.device,
    batch_size: int,
    channels_last: bool,
    setup_seconds: float,
    notes: list[str],
) -> PreparedEngine:
    return PreparedEngine(
        name="eager",
        setup_seconds=setup_seconds,
        device=device,
        batch_size=batch_size,
        channels_last=channels_last,
        forward=module,
        notes=notes,
    )


def prepare_engine(
    module: nn.Module,
    engine: str = "auto",
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_images: int | None = None,
    channels_last: bool = True,
    verify: bool = True,
    verify_sample: torch.Tensor | None = None,
    copy_module: bool = True,
) -> PreparedEngine:
    """Build the engine that runs ``module`` (by default a copy: the original is not modified).

    ``engine``: "eager", "fast" (always the default fast builder, unless it fails to build
    or to verify, then eager with the reason in ``.notes``), "fast:<builder>" for one of
    ``FAST_BUILDERS``, or "auto" (fast when ``num_images`` is unknown or at least
    ``AUTO_MIN_IMAGES``). Each fast candidate is checked against the eager
    module on ``verify_sample`` (a real NCHW batch is best; default: up to 8 synthetic
    images) unless ``verify=False``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    device = torch.device(device)
    chosen = choose_engine(engine, num_images)
    notes = [f"requested {engine!r}"]
    if engine == "auto":
        size = "unknown" if num_images is None else str(num_images)
        notes.append(f"auto: {size} images vs break-even {AUTO_MIN_IMAGES} -> {chosen}")
    if device.type == "cpu":
        notes.append(f"{configure_threads()} intra-op threads")
    elif device.type == "cuda":
        configure_cuda_exactness()

    # The caller's module is left untouched unless it hands it over (copy_module=False).
    eager_module = (copy.deepcopy(module) if copy_module else module).eval().to(device)
    if channels_last:
        eager_module = eager_module.to(memory_format=torch.channels_last)
    if chosen == "eager":
        elapsed = time.perf_counter() - start
        return _eager_engine(eager_module, device, batch_size, channels_last, elapsed, notes)

    builders = (chosen.removeprefix("fast:"),) if ":" in chosen else FAST_BUILDER_ORDER
    example = _example_batch(batch_size, device, channels_last)
    sample = example[: min(batch_size, 8)].clone() if verify_sample is None else verify_sample
    for builder_name in builders:
        try:
            forward = FAST_BUILDERS[builder_name](eager_module, example)
        except Exception as err:  # any build failure (tracing, compiler missing, ...)
            first_line = (str(err).strip().splitlines() or [""])[0][:300]
            reason = f"fast:{builder_name} failed to build ({type(err).__name__}: {first_line})"
            log.warning(reason)
            notes.append(reason)
            continue
        prepared = PreparedEngine(
            name=f"fast:{builder_name}",
            setup_seconds=0.0,
            device=device,
            batch_size=batch_size,
            channels_last=channels_last,
            forward=forward,
            staging=example,
            notes=notes,
        )
        problem = check_against_eager(prepared, eager_module, sample) if verify else None
        if problem is None:
            if verify:
                notes.append(f"{prepared.name} verified against eager on {len(sample)} images")
            prepared.setup_seconds = time.perf_counter() - start
            log.info("engine %s ready in %.1f s", prepared.name, prepared.setup_seconds)
            return prepared
        reason = f"fast:{builder_name} disagrees with eager ({problem})"
        log.warning(reason)
        notes.append(reason)
    notes.append("using eager")
    elapsed = time.perf_counter() - start
    return _eager_engine(eager_module, device, batch_size, channels_last, elapsed, notes)


def compare_logits(
    fast: torch.Tensor, eager: torch.Tensor, atol: float = VERIFY_ATOL, topk: int = VERIFY_TOPK
) -> str | None:
    """Return None if ``fast`` matches ``eager``, else one sentence saying how it differs.

    Match: max |difference| <= ``atol`` scaled by the logit magnitude when that exceeds 1
    (float32 rounding grows with the values, as in convert's TF check), and per row the same
    top-1 class and the same set of top-k classes.
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
    prepared: PreparedEngine,
    eager_module: nn.Module,
    sample: torch.Tensor,
    atol: float = VERIFY_ATOL,
) -> str | None:
    """Run ``sample`` through both; None if they agree (``compare_logits``), else why not."""
    try:
        with torch.inference_mode():
            eager_input = sample.to(prepared.device, torch.float32)
            if prepared.channels_last:
                eager_input = eager_input.contiguous(memory_format=torch.channels_last)
            expected = eager_module.eval()(eager_input)
        return compare_logits(prepared(sample), expected, atol=atol)
    except Exception as err:
        return f"it raised {type(err).__name__}: {err}"


def verify_engine(
    prepared: PreparedEngine,
    eager_module: nn.Module,
    sample: torch.Tensor,
    *,
    atol: float = VERIFY_ATOL,
) -> PreparedEngine:
    """Check a fast engine against the eager module on ``sample``; fall back to eager if not.

    Returns ``prepared`` (with a note) when logits agree within ``atol`` and top-1/top-5
    are identical, otherwise an eager engine whose ``.notes`` say why.
    """
    if not prepared.is_fast:
        return prepared
    problem = check_against_eager(prepared, eager_module, sample, atol)
    if problem is None:
        prepared.notes.append(f"{prepared.name} verified against eager on {len(sample)} images")
        return prepared
    reason = f"{prepared.name} disagrees with eager ({problem}); using eager"
    log.warning(reason)
    return _eager_engine(
        eager_module.eval(),
        prepared.device,
        prepared.batch_size,
        prepared.channels_last,
        prepared.setup_seconds,
        [*prepared.notes, reason],
    )
