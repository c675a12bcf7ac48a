"""The evaluation options, defined once for ``python -m eval`` and ``python -m pipeline.run``.

Light on purpose (no torch import), so ``--help`` stays instant. Both entry points build
``EvalSettings`` with ``from_options`` and refuse bad values with ``check`` before any work.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields, replace

from core.cli import check_choice, positive_int
from core.errors import UserError
from eval.method.options import add_method_options, check_method_settings, method_name

BACKENDS = ("torch", "tf")
ENGINES = ("auto", "eager", "fast")
# The builders behind "fast:NAME" (``eval.engines.fast_builders.FAST_BUILDERS``), named here so the
# option is checked without importing torch.
FAST_BUILDER_NAMES = ("torchscript-freeze", "inductor", "torchscript-onednn")
PRECISIONS = ("fp32", "tf32", "bf16")
LOADGEN_MODES = ("accuracy", "performance")
SCENARIOS = ("Offline", "SingleStream")
# Default batch sizes: 32 on the CPU (what make bench measures beside batch 1, in
# docs/measurements.md); a GPU needs large batches to be busy.
CPU_BATCH, CUDA_BATCH = 32, 256
# Real crops a fast engine must match eager on before it runs: enough rows to catch a wrong
# kernel or layout, few enough to cost a fraction of a second.
VERIFY_IMAGES = 8


def evaluation_name(backend: str, precision: str = "fp32", method: str | None = None) -> str:
    """One evaluation's folder name: the backend, plus the precision unless fp32 and the
    method's name, so a ``torch-bf16`` or ``torch-int8`` run sits beside (not over)
    ``torch``, the fp32 run it is judged against."""
    name = backend if precision == "fp32" else f"{backend}-{precision}"
    return name if method is None else f"{name}-{method}"


def check_engine(engine: str) -> None:
    """UserError unless ``engine`` is one of ENGINES or ``fast:<builder>``."""
    check_choice("engine", engine, (*ENGINES, *(f"fast:{name}" for name in FAST_BUILDER_NAMES)))


def check_precision(precision: str, device: str) -> None:
    """UserError for an unknown precision, or a CUDA-only one on another device."""
    check_choice("precision", precision, PRECISIONS)
    device_type = device.split(":")[0]
    if precision != "fp32" and device_type != "cuda":
        raise UserError(f"--precision {precision} runs on CUDA only; on the {device_type} use fp32")


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """How to evaluate: device, engine, precision, batch size, LoadGen."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--engine",
        default="auto",
        help="torch execution: eager, fast (frozen/compiled; fast:NAME picks one builder: "
        f"{', '.join(FAST_BUILDER_NAMES)}) or "
        "auto (default: whichever should finish first on this device for this many images; "
        "why goes to engine_notes)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32 (default, TF32 off: the figure comparable with MLPerf's); tf32 or bf16 on "
        "CUDA only. A non-fp32 run is judged like a method against its fp32 reference "
        "(--reference, or the sibling folder of --out with an fp32 run of the same model, "
        "cache and weights, e.g. results/resnet50-torch beside results/resnet50-torch-bf16)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"images per batch (default: {CPU_BATCH} on the CPU, {CUDA_BATCH} on CUDA)",
    )
    add_method_options(parser)
    parser.add_argument(
        "--loadgen", action="store_true", help="also run MLPerf LoadGen (logs in OUT/loadgen)"
    )
    parser.add_argument("--loadgen-mode", choices=LOADGEN_MODES, default="accuracy")
    parser.add_argument("--scenario", choices=SCENARIOS, default="Offline")


@dataclass(frozen=True)
class EvalSettings:
    """How one evaluation runs: the backend and its model file, device, batches, LoadGen."""

    backend: str = "torch"
    weights: str | os.PathLike | None = None  # converted .pth, for the torch backend
    checkpoint: str | os.PathLike | None = None  # frozen graph .pb, for the tf backend
    batch_size: int | None = None  # None: by device (``resolved``)
    device: str = "cpu"
    engine: str = "auto"
    precision: str = "fp32"
    limit: int | None = None  # evaluate only the first N cached images
    loadgen: str | None = None  # a LoadGen mode, or None for no LoadGen run
    scenario: str = "Offline"
    quiet: bool = False
    wait: bool = False  # wait for another run's lock on the output folder instead of refusing
    # A user's method (eval.method.options): a function spec, or a built-in quantization
    # scheme with its choices.
    transform: str | None = None
    quantize: str | None = None
    calibration_method: str | None = None  # None: the quantize package's default
    equalize: bool = False
    bias_correction: bool = True
    # Per-layer widths over a simulated scheme: a --layer-bits SPEC as given (NAME=wXaY,...
    # or a JSON file); the record holds the parsed map.
    layer_bits: str | None = None
    rounding: str = "auto"  # one of eval.method.options.ROUNDINGS
    mixed_precision: bool = False
    bit_budget: float | None = None  # mean weight bits a mixed-precision plan may spend
    # The preprocessed calibration images; None: the first images of the evaluated cache.
    calibration_cache: str | os.PathLike | None = None
    # The fp32 run a modified model is judged against; None: the sibling run of --out
    # with the same model, cache and weights (eval.method.reference).
    reference: str | os.PathLike | None = None

    @property
    def transformed(self) -> bool:
        """A transform or a quantization is applied to the fp32 model."""
        return self.transform is not None or self.quantize is not None

    @property
    def modified(self) -> bool:
        """Not the converted model in fp32: judged against an fp32 run."""
        return self.transformed or self.precision != "fp32"

    @property
    def folder_name(self) -> str:
        """This evaluation's folder name (``evaluation_name``)."""
        return evaluation_name(self.backend, self.precision, method_name(self))

    @classmethod
    def from_options(cls, options) -> EvalSettings:
        """From parsed command-line options: each field from the option of the same name
        (its default where there is none), ``loadgen`` from --loadgen and --loadgen-mode."""
        values = {f.name: getattr(options, f.name, f.default) for f in fields(cls)}
        values["loadgen"] = options.loadgen_mode if options.loadgen else None
        return cls(**values).resolved()

    def resolved(self) -> EvalSettings:
        """These settings with the device's default batch size where none was given."""
        if self.batch_size is not None:
            return self
        batch_size = CUDA_BATCH if self.device.startswith("cuda") else CPU_BATCH
        return replace(self, batch_size=batch_size)

    def check(self) -> None:
        """One sentence for an unknown engine, a malformed device or a precision the device
        cannot run; cheap (no torch), so entry points call it before any work."""
        check_engine(self.engine)
        # Only the spelling: whether the device exists is resolve_torch_device's question.
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise UserError(f"unknown device {self.device!r}: use cpu, cuda or cuda:N")
        check_precision(self.precision, self.device)
        check_method_settings(self)
