"""Inference engines for the converted models: eager PyTorch or a faster frozen graph.

``prepare_engine`` returns a ``PreparedEngine``: ``NCHW float32 -> logits``, recording the
engine that really runs (``.name``), its build cost and why it was chosen (``.notes``).
"fast" tries the float32 builders in ``FAST_BUILDER_ORDER`` (``CUDA_FAST_BUILDER_ORDER``)
and runs the first that builds and matches eager on a sample (``compare_logits``), else
eager. A fast engine runs a copy with its TF-SAME pads folded into the convolutions, always
at the batch shape it was built for (smaller batches zero-padded, larger ones split), so
nothing is re-traced. "auto" picks what should finish first (by image count on the CPU, by
estimated time on CUDA); tf32 and bf16 (CUDA only) always run eager. Channels-last except
fp32 ResNet-50 on CUDA (NCHW measured faster); on the CPU one single-threaded worker per
core (``eval.cpu_workers``); on CUDA setup runs each batch shape once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from convert.models.pad_folding import fold_same_padding
from core.cli import check_at_least_one
from core.errors import first_line
from core.files import write_text_atomic
from core.system import temporarily
from eval.cpu_workers import CoreWorkers, chunk_images, cores_for_this_process, worker_count
from eval.options import VERIFY_IMAGES, check_engine, check_precision

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]

# "auto" on the CPU: a fast build costs up to ~10 s and saves 3.3 ms per MobileNet image
# (workers: eager 100.4, fast 150.4 img/s) and 15.6 ms per ResNet-50 image (18.3 vs 25.6),
# so it pays back after ~3,000 images at worst; 5,000 leaves a ~1.7x margin for a slower
# build or a smaller saving on another CPU.
AUTO_MIN_IMAGES = 5000

# CUDA img/s for "auto" and the cold fast-build seconds, measured on one H100 (fp32, batch
# 256, 50,000 images). Other precisions and cards reuse them: only the order of magnitude
# of the break-even matters.
CUDA_RATES = {
    "resnet50": {"eager": 2300.0, "fast": 3470.0, "build_seconds": 37.0},
    "mobilenet_v1": {"eager": 2000.0, "fast": 3300.0, "build_seconds": 33.0},
}
CUDNN_AUTOTUNE_MIN_IMAGES = 200_000
# Builds of the one builder with an on-disk compile cache are timed into this file beside
# that cache: a later "auto" on CUDA reads a recorded time as "warm cache, cheap build".
CACHED_BUILDER = "fast:inductor"


@dataclass
class PreparedEngine:
    """``engine(nchw_float32) -> logits``, or ``engine(nchw_uint8, transform=normalize)``;
    ``name`` is the engine that actually runs ("eager", "fast:inductor", ...), ``notes``
    why it was chosen or why it fell back."""

    name: str
    setup_seconds: float
    device: torch.device
    rows_per_call: int  # the batch a fast engine was built for; a CPU worker's chunk
    channels_last: bool
    forward: Forward
    # A fast engine sees one input tensor only: a rows_per_call-row buffer each call copies
    # into. Same shape, strides and tensor kind every time, so torch.compile's guards never
    # see a new input (a padded or inference-mode tensor would recompile).
    staging: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    # CPU: one single-threaded worker per core, each running its own chunks of the batch;
    # None runs every call on this thread with intra-op threads.
    workers: CoreWorkers | None = None

    @property
    def is_fast(self) -> bool:
        return self.name.startswith("fast")

    def __call__(
        self, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits of an NCHW batch. ``transform`` (uint8 -> float32, elementwise) runs on
        each chunk where it runs, so on the CPU every worker normalises its own images."""
        if images.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {tuple(images.shape)}")
        if self.staging is not None and images.shape[1:] != self.staging.shape[1:]:
            raise ValueError(
                f"this engine was built for images of shape {tuple(self.staging.shape[1:])},"
                f" got {tuple(images.shape[1:])}"
            )
        images = images.to(self.device, non_blocking=True)
        chunks = images.split(self.rows_per_call)
        run = functools.partial(self._run_chunk, transform=transform)
        if self.workers is not None:  # even one chunk: compiled code expects one thread
            return torch.cat(self.workers.map(run, chunks), dim=0)
        return torch.cat([run(chunk) for chunk in chunks], dim=0)

    def _run_chunk(self, chunk: torch.Tensor, transform: Callable | None = None) -> torch.Tensor:
        """At most ``rows_per_call`` rows; a fast engine sees them in its staging buffer."""
        staging = self.staging
        if staging is not None and self.workers is not None:
            # Each thread fills its own buffer (calls on the workers run concurrently), made
            # outside inference mode like the original: compile guards tell the kinds apart.
            staging = self.workers.per_thread(self.staging.clone)
        with torch.inference_mode():
            chunk = transform(chunk) if transform is not None else chunk.to(torch.float32)
            # One layout for every call (an NHWC cache arrives as a channels-last view): a
            # layout change would be a new cuDNN shape to tune, and NCHW was chosen on purpose.
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            chunk = chunk.contiguous(memory_format=layout)
            if staging is None:
                return self.forward(chunk)
            rows = chunk.shape[0]
            staging[:rows].copy_(chunk)
            if rows < self.rows_per_call:
                staging[rows:].zero_()
            return self.forward(staging)[:rows].clone()


def cudnn_autotune(num_images: int | None) -> tuple[bool, str]:
    """Whether cuDNN should time every algorithm per shape, and why: ResNet-50's cost 12.3 s
    on an H100, more than a 50,000-image run wins back. MLPERF_PORT_CUDNN_AUTOTUNE=1/0 rules."""
    forced = os.environ.get("MLPERF_PORT_CUDNN_AUTOTUNE")
    if forced in ("0", "1"):
        return forced == "1", f"cuDNN autotune {'on' if forced == '1' else 'off'} (environment)"
    on = num_images is None or num_images >= CUDNN_AUTOTUNE_MIN_IMAGES
    size = "unknown" if num_images is None else str(num_images)
    return on, (
        f"cuDNN autotune {'on' if on else 'off'} ({size} images vs "
        f"{CUDNN_AUTOTUNE_MIN_IMAGES} that repay its ~12 s)"
    )


def prefers_channels_last(
    model_name: str | None, device_type: str, precision: str = "fp32"
) -> bool:
    """The measured faster memory format: NCHW only for fp32 ResNet-50 on CUDA."""
    return not (device_type == "cuda" and precision == "fp32" and model_name == "resnet50")


def choose_engine(
    engine: str,
    num_images: int | None,
    device_type: str = "cpu",
    model_name: str | None = None,
    precision: str = "fp32",
    batch_size: int | None = None,
) -> tuple[str, str | None]:
    """Resolve ``engine`` to ``("eager" | "fast" | "fast:<builder>", why)``; ``why`` is None
    unless a rule (not the caller) decided."""
    check_engine(engine)
    if precision != "fp32" and engine != "eager":
        return "eager", f"precision {precision}: eager (fast engines are verified in fp32)"
    if engine != "auto":
        return engine, None
    size = "unknown" if num_images is None else str(num_images)
    if device_type == "cuda" and model_name in CUDA_RATES:
        return _auto_on_cuda(num_images, model_name, batch_size)
    chosen = "eager" if num_images is not None and num_images < AUTO_MIN_IMAGES else "fast"
    return chosen, f"auto: {size} images vs break-even {AUTO_MIN_IMAGES} -> {chosen}"


def _auto_on_cuda(num_images: int | None, model_name: str, batch_size: int | None):
    """Estimated finish time of eager and fast on CUDA; the earlier one wins."""
    rates = CUDA_RATES[model_name]
    recorded = recorded_build_seconds(model_name, "cuda", batch_size)
    build = rates["build_seconds"] if recorded is None else recorded
    source = "cold compile" if recorded is None else "recorded build, warm compile cache"
    if num_images is None:
        chosen = "fast" if rates["fast"] > rates["eager"] else "eager"
        return chosen, f"auto on cuda: unknown image count -> {chosen}"
    eager_s = num_images / rates["eager"]
    fast_s = build + num_images / rates["fast"]
    chosen = "fast" if fast_s < eager_s else "eager"
    why = (
        f"auto on cuda: {num_images} images, eager ~{eager_s:.1f} s vs fast ~{fast_s:.1f} s "
        f"({build:.1f} s {source}) -> {chosen}"
    )
    return chosen, why


def _build_record_path() -> Path | None:
    """A small JSON beside inductor's on-disk compile cache (None if unavailable)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return None
    return Path(cache_dir()) / "mlperf-port-fast-builds.json"


def _build_key(model_name: str | None, device_type: str, batch_size: int | None) -> str:
    return f"{model_name}|{device_type}|{batch_size}|torch {torch.__version__}"


def recorded_build_seconds(model_name: str | None, device_type: str, batch_size: int | None):
    """Seconds of the last inductor build of this model/device/batch, if one was recorded."""
    path = _build_record_path()
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get(_build_key(model_name, device_type, batch_size))
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def record_build_seconds(
    model_name: str | None, device_type: str, batch_size: int, seconds: float
) -> None:
    """Remember an inductor build's cost: the next "auto" then knows its cache is warm."""
    path = _build_record_path()
    if path is None or model_name is None:
        return
    with contextlib.suppress(OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        records = json.loads(path.read_text()) if path.is_file() else {}
        records[_build_key(model_name, device_type, batch_size)] = round(seconds, 2)
        write_text_atomic(path, json.dumps(records, indent=1, sort_keys=True))


def warmup_batch_sizes(num_images: int | None, batch_size: int) -> list[int]:
    """The batch shapes a run will see: the full batch, and the tail when there is one."""
    if num_images is None:
        return [batch_size]
    full, tail = divmod(num_images, batch_size)
    return ([batch_size] if full else []) + ([tail] if tail else [])


def warm_up(prepared: PreparedEngine, num_images: int | None, batch_size: int) -> None:
    """Run each batch shape once (cuDNN autotune, allocator, lazy init); note what it cost."""
    start = time.perf_counter()
    shapes = warmup_batch_sizes(num_images, batch_size)
    example = _example_batch(max(shapes, default=1), prepared.device, prepared.channels_last)
    for rows in shapes:
        prepared(example[:rows])
    if prepared.device.type == "cuda":
        torch.cuda.synchronize(prepared.device)
    prepared.notes.append(f"warm-up of batch shapes {shapes}: {time.perf_counter() - start:.2f} s")


def _example_batch(batch_size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    # Deterministic, in the value range of both recipes' inputs (vgg is roughly +-128).
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch_size, 3, 224, 224, generator=generator).mul_(50.0).to(device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    return example


def build_torchscript_freeze(module: nn.Module, example: torch.Tensor) -> Forward:
    """Trace at the example's shape, then freeze: constants, conv+BN folding, no Python."""
    with torch.no_grad(), warnings.catch_warnings():
        # Shape arithmetic in the TF-SAME padding becomes constants: right for a fixed shape.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 marks jit.freeze deprecated; it still measured fastest here.
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


def prepare_engine(
    module: nn.Module,
    engine: str = "auto",
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_images: int | None = None,
    channels_last: bool | None = None,
    verify_sample: torch.Tensor | None = None,
    copy_module: bool = True,
    model_name: str | None = None,
    precision: str = "fp32",
    warmup: bool | None = None,
) -> PreparedEngine:
    """Build the engine that runs ``module`` (a copy unless ``copy_module=False``).

    ``engine``: "eager", "fast", "fast:<builder>" or "auto" (module docstring). Fast
    candidates must match eager on ``verify_sample`` (default: VERIFY_IMAGES synthetic
    images). ``None``: the measured ``channels_last``; ``warmup`` on CUDA only.
    """
    check_at_least_one(batch_size, "--batch-size")
    start = time.perf_counter()
    device = torch.device(device)
    check_precision(precision, device.type)
    chosen, why = choose_engine(engine, num_images, device.type, model_name, precision, batch_size)
    notes = [f"requested {engine!r}", *([why] if why else [])]
    if channels_last is None:
        channels_last = prefers_channels_last(model_name, device.type, precision)
    eager_module = (copy.deepcopy(module) if copy_module else module).eval().to(device)
    prepared = _eager_engine(
        eager_module, device, batch_size, num_images, channels_last, precision, notes
    )
    if chosen != "eager":
        # Built for single-threaded workers: inductor bakes the thread count into its code.
        one_thread = temporarily(torch.get_num_threads, torch.set_num_threads, 1)
        with one_thread if prepared.workers else contextlib.nullcontext():
            prepared = _build_fast(prepared, chosen, verify_sample)
        if prepared.name == CACHED_BUILDER:  # the record stands for this builder's cache
            record_build_seconds(model_name, device.type, batch_size, time.perf_counter() - start)
    if warmup or (warmup is None and device.type == "cuda"):
        warm_up(prepared, num_images, batch_size)
    prepared.setup_seconds = time.perf_counter() - start
    log.info("engine %s ready in %.1f s", prepared.name, prepared.setup_seconds)
    return prepared


def _autocast_bf16(module: nn.Module, device: torch.device) -> Callable:
    """The module under bfloat16 autocast, its logits handed back as float32."""

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return module(images).float()

    return forward


def _eager_engine(module, device, batch_size, num_images, channels_last, precision, notes):
    """The eager engine of ``module`` (already on ``device``), with its threads or workers."""
    notes.append(f"{precision}, {'channels-last' if channels_last else 'NCHW'}")
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    workers, chunk = _configure_device(device, batch_size, num_images, precision, notes)
    forward = _autocast_bf16(module, device) if precision == "bf16" else module
    return PreparedEngine(
        name="eager",
        setup_seconds=0.0,
        device=device,
        rows_per_call=chunk,
        channels_last=channels_last,
        forward=forward,
        notes=notes,
        workers=workers,
    )


def _configure_device(device, batch_size, num_images, precision, notes):
    """Threads or per-core workers on the CPU, precision and autotuning on CUDA; returns
    ``(workers or None, rows per engine call)``."""
    if device.type == "cuda":
        autotune, why_tune = cudnn_autotune(num_images)
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = autotune
        notes.append(why_tune)
    if device.type != "cpu":
        return None, batch_size
    # Intra-op threads on every core this process may use (workers set their own to one).
    # Inter-op threads only matter for forked graphs; one is enough. It can only be set
    # before the first parallel region, so a later call is skipped.
    threads = cores_for_this_process()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    count = worker_count(batch_size)
    if count == 1:
        notes.append(f"{threads} intra-op threads")
        return None, batch_size
    chunk = chunk_images(batch_size, count)
    notes.append(f"{count} single-threaded workers, {chunk}-image chunks")
    return CoreWorkers(count), chunk


def _build_fast(
    eager: PreparedEngine, chosen: str, verify_sample: torch.Tensor | None
) -> PreparedEngine:
    """The first fast builder that builds and matches ``eager`` (run as it will run, through
    the CPU workers); else ``eager``, with the reasons in the notes."""
    device, channels_last, notes = eager.device, eager.channels_last, eager.notes
    eager_module = eager.forward  # the module itself: fast engines are fp32 only
    default_order = CUDA_FAST_BUILDER_ORDER if device.type == "cuda" else FAST_BUILDER_ORDER
    builders = (chosen.removeprefix("fast:"),) if ":" in chosen else default_order
    example = _example_batch(eager.rows_per_call, device, channels_last)
    if verify_sample is None:
        verify_sample = _example_batch(VERIFY_IMAGES, device, channels_last)
    # The fast engines run a copy with its TF-SAME pads folded into the convs (even and,
    # on depthwise convs, uneven ones); eager, the reference they are verified against,
    # stays the converted module as it is.
    fast_module = copy.deepcopy(eager_module)
    if folded := fold_same_padding(fast_module, example):
        notes.append(f"{folded} TF-SAME pads folded into their convolutions")
    for builder_name in builders:
        name = f"fast:{builder_name}"
        try:
            forward = FAST_BUILDERS[builder_name](fast_module, example)
        except Exception as err:  # any build failure (tracing, compiler missing, ...)
            problem = f"{name} failed to build ({type(err).__name__}: {first_line(err, 300)})"
        else:
            prepared = dataclasses.replace(eager, name=name, forward=forward, staging=example)
            problem = check_against_eager(prepared, eager_module, verify_sample)
            if problem is None:
                notes.append(f"{name} verified against eager on {len(verify_sample)} images")
                return prepared
            problem = f"{name} disagrees with eager ({problem})"
        log.warning(problem)
        notes.append(problem)
    notes.append("using eager")
    return eager


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
    prepared: PreparedEngine, eager_module: nn.Module, sample: torch.Tensor
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
