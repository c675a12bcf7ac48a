"""The evaluation options, defined once for ``python -m eval`` and ``python -m pipeline.run``.

Light on purpose (no torch import), so ``--help`` stays instant. Both entry points build
``EvalSettings`` with ``from_options`` and refuse bad values with ``check`` before any work.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields, replace

from core.cli import positive_int
from core.errors import UserError

BACKENDS = ("torch", "tf")
ENGINES = ("auto", "eager", "fast")
# The builders behind "fast:NAME" (``eval.fast_builders.FAST_BUILDERS``), named here so the
# option is checked without importing torch.
FAST_BUILDER_NAMES = ("torchscript-freeze", "inductor", "torchscript-onednn")
PRECISIONS = ("fp32", "tf32", "bf16")
LOADGEN_MODES = ("accuracy", "performance")
SCENARIOS = ("Offline", "SingleStream")
# Default batch sizes: 32 measured best on the CPU; a GPU needs large batches to be busy.
CPU_BATCH, CUDA_BATCH = 32, 256
# Real crops a fast engine must match eager on before it runs: enough rows to catch a wrong
# kernel or layout, few enough to cost a fraction of a second.
VERIFY_IMAGES = 8


# --calibration-method choices (``quantize.CALIBRATION_METHODS``), named here so the option
# is checked without importing torch.
CALIBRATION_METHODS = ("minmax", "percentile", "mse", "entropy")


def evaluation_name(
    backend: str, precision: str = "fp32", transform: str | None = None, variant: str = ""
) -> str:
    """One evaluation's folder name: the backend, plus the precision unless fp32 and the
    transform's name, so a ``torch-bf16`` or ``torch-int8`` run sits beside (not over)
    ``torch``, the fp32 run ``eval.fp32_reference`` compares it with."""
    name = backend if precision == "fp32" else f"{backend}-{precision}"
    if transform is not None:
        name += f"-{transform}{variant}"
    return name


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """UserError (one sentence) unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}: expected one of {', '.join(choices)}")


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
        "CUDA only. A non-fp32 run records in results.json the share of its predictions equal "
        "to an fp32 run of the same model, cache and weights found in a sibling folder of "
        "--out (e.g. results/resnet50-torch beside results/resnet50-torch-bf16)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"images per batch (default: {CPU_BATCH} on the CPU, {CUDA_BATCH} on CUDA)",
    )
    add_transform_options(parser)
    parser.add_argument(
        "--loadgen", action="store_true", help="also run MLPerf LoadGen (logs in OUT/loadgen)"
    )
    parser.add_argument("--loadgen-mode", choices=LOADGEN_MODES, default="accuracy")
    parser.add_argument("--scenario", choices=SCENARIOS, default="Offline")


def add_transform_options(parser: argparse.ArgumentParser) -> None:
    """A user's method applied to the fp32 model before it is evaluated (eval.transform)."""
    group = parser.add_argument_group(
        "your method (an fp32 run of the same model is its reference)"
    )
    what = group.add_mutually_exclusive_group()
    what.add_argument(
        "--transform",
        metavar="SPEC",
        help="path/to/file.py:function or package.module:function, called once as "
        "function(model, calibration) -> the module to evaluate",
    )
    what.add_argument(
        "--quantize",
        metavar="SCHEME",
        help="built-in post-training quantization: int8 (oneDNN int8 kernels, CPU) or a "
        "simulated wXaY such as w8a8, w4a8, w6a6 (fake-quantized in float32)",
    )
    group.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        help="how --quantize sets activation ranges (default: the quantize package's)",
    )
    group.add_argument(
        "--equalization",
        dest="equalize",
        action="store_true",
        help="--quantize with cross-layer equalization (off by default: with per-channel "
        "weights it cost accuracy where measured; see benchmarks/quantization_study.py)",
    )
    group.add_argument(
        "--no-bias-correction",
        dest="bias_correction",
        action="store_false",
        help="--quantize without bias correction (to measure what it adds)",
    )


def transform_variant(settings) -> str:
    """The folder-name suffix of a --quantize run that leaves the defaults (a method, or a
    technique left out), so such runs sit beside the default one instead of over it."""
    if settings.quantize is None:
        return ""
    suffix = f"-{settings.calibration_method}" if settings.calibration_method else ""
    suffix += "-cle" if settings.equalize else ""
    suffix += "" if settings.bias_correction else "-no-bc"
    return suffix


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
    # A user's method (eval.transform): a function spec, or a built-in quantization scheme.
    transform: str | None = None
    quantize: str | None = None
    calibration_method: str | None = None  # None: the quantize package's default
    equalize: bool = False
    bias_correction: bool = True
    # The preprocessed calibration images; None: the first images of the evaluated cache.
    calibration_cache: str | os.PathLike | None = None

    @property
    def transformed(self) -> bool:
        return self.transform is not None or self.quantize is not None

    @property
    def folder_name(self) -> str:
        """This evaluation's folder name (``evaluation_name``)."""
        from eval.transform import transform_name

        name = transform_name(self.transform, self.quantize)
        return evaluation_name(self.backend, self.precision, name, transform_variant(self))

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
        self._check_transform()

    def _check_transform(self) -> None:
        """The method options fit together and fit the backend and device."""
        if self.transform is not None and self.quantize is not None:
            raise UserError("give --transform or --quantize, not both")
        if not self.transformed:
            for given, option in (
                (self.calibration_method is not None, "--calibration-method"),
                (self.equalize, "--equalization"),
                (not self.bias_correction, "--no-bias-correction"),
            ):
                if given:
                    raise UserError(f"{option} is for --quantize")
            return
        if self.backend == "tf":
            raise UserError(
                "--transform and --quantize modify the PyTorch model: use --backend torch"
            )
        if self.transform is not None:
            from eval.transform import transform_name

            transform_name(self.transform, None)  # its spelling, before any work
            if self.calibration_method is not None or self.equalize or not self.bias_correction:
                raise UserError(
                    "--calibration-method, --equalization and --no-bias-correction are "
                    "for --quantize; your transform chooses its own"
                )
            return
        if self.calibration_method is not None:
            check_choice("calibration method", self.calibration_method, CALIBRATION_METHODS)
        check_scheme_spelling(self.quantize, self.device)


def check_scheme_spelling(scheme: str, device: str) -> None:
    """``int8`` or ``wXaY`` (2 to 16 bits each); int8 only on the CPU."""
    match = re.fullmatch(r"w(\d+)a(\d+)", scheme)
    if scheme != "int8" and not (match and all(2 <= int(b) <= 16 for b in match.groups())):
        raise UserError(
            f"unknown --quantize scheme {scheme!r}: use int8 (real int8 kernels) or a "
            "simulated wXaY with 2 to 16 bits each, such as w8a8, w4a8 or w6a6"
        )
    if scheme == "int8" and not device.startswith("cpu"):
        raise UserError(
            "--quantize int8 runs on the CPU (oneDNN int8 kernels); on CUDA use a "
            "simulated scheme such as w8a8"
        )
