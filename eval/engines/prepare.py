"""Build the engine a run asks for: eager, or a fast one checked against eager (see the
package's docstring)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from convert.models.pad_folding import fold_same_padding
from core.cli import check_at_least_one
from core.errors import first_line
from core.system import temporarily
from eval.engines.build_times import CACHED_BUILDER, record_build_seconds
from eval.engines.choice import choose_engine, cudnn_autotune, prefers_channels_last
from eval.engines.cpu_workers import CoreWorkers, chunk_images, cores_for_this_process, worker_count
from eval.engines.fast_builders import (
    CUDA_FAST_BUILDER_ORDER,
    FAST_BUILDER_ORDER,
    FAST_BUILDERS,
    Forward,
    check_against_eager,
)
from eval.engines.warmup import example_batch, warm_up
from eval.options import VERIFY_IMAGES, check_precision

log = logging.getLogger(__name__)


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
    images). ``None``: ``channels_last`` by the model's rule; ``warmup`` on CUDA only.
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
    example = example_batch(eager.rows_per_call, device, channels_last)
    if verify_sample is None:
        verify_sample = example_batch(VERIFY_IMAGES, device, channels_last)
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
