"""Which engine and memory layout should finish a run first, decided before anything is
built: "auto" weighs a fast build's cost against the images it would speed up (by image
count on the CPU, by estimated time on CUDA); the memory format and cuDNN autotuning
follow fixed rules by model and run length. tf32 and bf16 (CUDA only) always run eager.
"""

from __future__ import annotations

import os

from eval.engines.build_times import recorded_build_seconds
from eval.options import check_engine

# "auto" on the CPU: a fast build costs 1-10 s and saves ~3 ms per MobileNet image (workers:
# eager 110.3, fast 163.6 img/s) and ~12 ms per ResNet-50 image (19.8 vs 26.0), so it pays
# back after ~3,400 images at worst; 5,000 leaves a ~1.5x margin for a slower build or a
# smaller saving on another CPU. Figures: docs/measurements.md, "Measured so far", the
# Inference table and the paragraph below it (python -m benchmarks.bench_inference --models
# mobilenet_v1 resnet50 --batches 32 --engines eager fast ..., on 2 EPYC cores).
AUTO_MIN_IMAGES = 5000

# CUDA img/s for "auto" and the cold fast-build seconds (fp32, batch 256): rough figures,
# reused for other precisions and cards, as only the break-even's order of magnitude
# matters. Only MobileNet's eager rate has a recorded run: 50,000 images in 25.4 s of wall
# time (~2,000 img/s) on one H100, at an earlier version of the loop (docs/measurements.md,
# "Measured so far", GPU: python -m eval --engine eager). python -m benchmarks.gpu_check
# --out OUT measures both engines' setup seconds and img/s on a card.
CUDA_RATES = {
    "resnet50": {"eager": 2300.0, "fast": 3470.0, "build_seconds": 37.0},
    "mobilenet_v1": {"eager": 2000.0, "fast": 3300.0, "build_seconds": 33.0},
}
CUDNN_AUTOTUNE_MIN_IMAGES = 200_000


def cudnn_autotune(num_images: int | None) -> tuple[bool, str]:
    """Whether cuDNN should time every algorithm per shape, and why: its one-time cost pays
    back only over long runs (python -m benchmarks.gpu_check's full.autotune step measures
    it on a card). MLPERF_PORT_CUDNN_AUTOTUNE=1/0 rules."""
    forced = os.environ.get("MLPERF_PORT_CUDNN_AUTOTUNE")
    if forced in ("0", "1"):
        return forced == "1", f"cuDNN autotune {'on' if forced == '1' else 'off'} (environment)"
    on = num_images is None or num_images >= CUDNN_AUTOTUNE_MIN_IMAGES
    size = "unknown" if num_images is None else str(num_images)
    return on, (
        f"cuDNN autotune {'on' if on else 'off'} ({size} images vs "
        f"{CUDNN_AUTOTUNE_MIN_IMAGES} that repay its one-time tuning)"
    )


def prefers_channels_last(
    model_name: str | None, device_type: str, precision: str = "fp32"
) -> bool:
    """The memory format a run uses: NCHW only for fp32 ResNet-50 on CUDA."""
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
