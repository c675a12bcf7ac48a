"""The evaluation options, defined once for ``python -m eval`` and ``python -m pipeline.run``.

Light on purpose (no torch import), so ``--help`` stays instant; the modules that act on
these values (engines, loadgen, backends) import the same constants.
"""

from __future__ import annotations

import argparse

from core.errors import positive_int

BACKENDS = ("torch", "tf")
ENGINES = ("auto", "eager", "fast")
PRECISIONS = ("fp32", "tf32", "bf16")
LOADGEN_MODES = ("accuracy", "performance")
SCENARIOS = ("Offline", "SingleStream")
# Default batch sizes: 32 measured best on the CPU; a GPU needs large batches to be busy.
CPU_BATCH, CUDA_BATCH = 32, 256


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """How to evaluate: device, engine, precision, batch size, LoadGen."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--engine",
        default="auto",
        help="torch execution: eager, fast (frozen/compiled; fast:NAME picks one builder) or "
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
        "--out (e.g. results/resnet50-torch beside results/resnet50-bf16)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"images per batch (default: {CPU_BATCH} on the CPU, {CUDA_BATCH} on CUDA)",
    )
    parser.add_argument(
        "--loadgen", action="store_true", help="also run MLPerf LoadGen (logs in OUT/loadgen)"
    )
    parser.add_argument("--loadgen-mode", choices=LOADGEN_MODES, default="accuracy")
    parser.add_argument("--scenario", choices=SCENARIOS, default="Offline")


def default_batch_size(batch_size: int | None, device: str) -> int:
    if batch_size is not None:
        return batch_size
    return CUDA_BATCH if device.startswith("cuda") else CPU_BATCH
