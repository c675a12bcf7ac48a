"""Layer-by-layer comparison of a converted model with the original TF graph.

Both run on the same MLPerf-preprocessed NHWC float32 images (real ones, or deterministic
smooth synthetic ones). Every block's activation is compared (stem, each bottleneck or
features block, pooled features, logits) against the TF tensor the weight walker found for
it; NHWC tensors are moved to NCHW first. The conversion passes when the logits agree to
``tolerance`` relative to the logit magnitude and top-1/top-5 agree on every image.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.errors import UserError
from core.profiles import CROP_SIZE, ModelProfile
from core.records import Record

from .walker import LayerTensor

log = logging.getLogger(__name__)

SQNR_CAP_DB = 200.0


@dataclass
class LayerDiff(Record):
    layer: str
    tf_tensor: str
    shape: list[int]
    max_abs_diff: float
    max_rel_diff: float  # max |diff| / max |TF activation| of the layer
    within_tolerance: bool  # a lead to where a difference starts; only the logits decide
    encoding: str = ""  # batch-norm encoding(s) the converter found in this block
    # Over all images: 10 log10(sum ref^2 / sum diff^2) (SQNR_CAP_DB at most), and the cosine
    # of the angle between the two activations, flattened.
    sqnr_db: float | None = None
    cosine: float | None = None


@dataclass
class ImageAgreement(Record):
    image: str
    tf_top1: int
    torch_top1: int
    top1_agree: bool
    top5_agree: bool
    max_abs_logit_diff: float


@dataclass
class VerificationResult(Record):
    """``to_json()``: the full report; ``summary()``: without the per-layer and per-image rows."""

    passed: bool
    source: str
    num_images: int
    tolerance: float
    logits_max_abs_diff: float
    logits_max_rel_diff: float
    top1_agreement: float  # fraction of the images
    top5_agreement: float
    first_failing_layer: str | None
    failures: list[str]
    layers: list[LayerDiff]
    images: list[ImageAgreement]

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_json().items() if k not in ("layers", "images")}

    def table(self) -> str:
        """The per-layer comparison as an aligned text table."""
        header = ("layer", "TF tensor", "batch norm", "shape", "max|diff|", "max rel", "tolerance")
        rows = [header] + [
            (
                r.layer,
                r.tf_tensor,
                r.encoding or "-",
                "x".join(map(str, r.shape)),
                f"{r.max_abs_diff:.3g}",
                f"{r.max_rel_diff:.3g}",
                "ok" if r.within_tolerance else "over",
            )
            for r in self.layers
        ]
        widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        top1 = sum(i.top1_agree for i in self.images)
        top5 = sum(i.top5_agree for i in self.images)
        lines.append(
            f"logits: max |diff| {self.logits_max_abs_diff:.3g}, max rel "
            f"{self.logits_max_rel_diff:.3g} (tolerance {self.tolerance:g}); top-1 agree "
            f"{top1}/{self.num_images}, top-5 agree {top5}/{self.num_images} on {self.source}"
        )
        if self.first_failing_layer:
            lines.append(f"first layer over tolerance: {self.first_failing_layer}")
        lines.append(
            "only the logits and their top-1/top-5 decide the result; a layer over tolerance "
            "shows where a difference starts"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------- images


def synthetic_images(
    profile: ModelProfile, count: int = 4, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Deterministic smooth random crops, normalised with the model's MLPerf recipe."""
    import cv2

    from preprocess import normalize

    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(-8, 9, size=smooth.shape)
        crops.append(np.clip(smooth.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    names = [f"synthetic_{i}" for i in range(count)]
    return names, normalize(np.stack(crops), profile)


def images_from_dir(profile: ModelProfile, folder: str | os.PathLike, limit: int | None):
    from preprocess import mlperf_preprocess
    from preprocess.dataset import IMAGE_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"verification image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"{folder} holds no images to verify the conversion with")
    if limit is not None and len(files) > limit:
        log.info("verifying on the first %d of %d images in %s", limit, len(files), folder)
        files = files[:limit]
    batch = np.stack([mlperf_preprocess(p, profile) for p in files])
    return [str(p.relative_to(folder)) for p in files], batch


def verification_images(
    profile: ModelProfile,
    verify_images: str | os.PathLike | None = None,
    verify_cache: str | os.PathLike | None = None,
    verify_limit: int | None = 32,
) -> tuple[str, list[str], np.ndarray]:
    """(description, image names, NHWC float32 batch) to verify ``profile``'s model with."""
    if verify_images is not None and verify_cache is not None:
        raise UserError("give either verification images or a verification cache, not both")
    if verify_images is not None:
        names, batch = images_from_dir(profile, verify_images, verify_limit)
        return f"{len(names)} images from {verify_images}", names, batch
    if verify_cache is not None:
        from preprocess import load_cache

        cache = load_cache(verify_cache, profile)
        count = len(cache) if verify_limit is None else min(verify_limit, len(cache))
        if count == 0:
            raise UserError(f"the cache at {verify_cache} holds no images to verify with")
        names = list(cache.files[:count])
        return f"{count} images from cache {verify_cache}", names, cache.normalized(0, count)
    names, batch = synthetic_images(profile)
    return f"{len(names)} synthetic images", names, batch


# ---------------------------------------------------------------------------- comparison


def _topk(row: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-row, kind="stable")[:k].tolist())


def topk_agree(tf_row: np.ndarray, torch_row: np.ndarray, k: int, tie_tolerance: float) -> bool:
    """Same top-k classes, except for classes tied with TF's k-th logit within tolerance."""
    differing = _topk(tf_row, k) ^ _topk(torch_row, k)
    if not differing:
        return True
    kth = np.sort(tf_row)[::-1][k - 1]
    return all(abs(tf_row[c] - kth) <= tie_tolerance for c in differing)


def _keep_output(outputs: dict, name: str, module, _inputs, output) -> None:
    """Forward hook (bound by ``functools.partial``): copy module ``name``'s output, as
    float32 (a quantized module's integer output through its ``dequantize``)."""
    if not output.is_floating_point() and hasattr(module, "dequantize"):
        output = module.dequantize(output)
    outputs[name] = output.detach().float().clone()


@dataclass
class _LayerStats:
    """Running per-layer maxima over all batches, plus the logits kept for per-image checks."""

    max_abs: dict[str, float] = field(default_factory=dict)
    max_ref: dict[str, float] = field(default_factory=dict)
    # Sums over every element of every batch: ref^2, diff^2, ours^2, ours * ref.
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    mismatched: set[str] = field(default_factory=set)
    tf_logits: list[np.ndarray] = field(default_factory=list)
    pt_logits: list[np.ndarray] = field(default_factory=list)

    def add(self, lt: LayerTensor, pt: np.ndarray, ref: np.ndarray, batch_len: int) -> None:
        """Fold one batch of one layer in; a size mismatch marks the layer and skips it."""
        self.shapes[lt.layer] = list(pt.shape[1:])
        if ref.size != pt.size:
            self.mismatched.add(lt.layer)
            return
        ours = pt.reshape(batch_len, -1).astype(np.float64)
        theirs = ref.reshape(batch_len, -1).astype(np.float64)
        diff = np.abs(ours - theirs)
        self.max_abs[lt.layer] = max(self.max_abs.get(lt.layer, 0.0), float(diff.max()))
        self.max_ref[lt.layer] = max(self.max_ref.get(lt.layer, 0.0), float(np.abs(ref).max()))
        sums = np.array(
            [(theirs**2).sum(), (diff**2).sum(), (ours**2).sum(), (ours * theirs).sum()]
        )
        self.sums[lt.layer] = self.sums.get(lt.layer, 0.0) + sums
        if not lt.module:  # the model's own output: the logits
            self.tf_logits.append(ref.reshape(batch_len, -1))
            self.pt_logits.append(pt.reshape(batch_len, -1))


def _collect_stats(
    model: nn.Module,
    runner: Any,
    layer_tensors: list[LayerTensor],
    images: np.ndarray,
    data_format: str,
    quiet: bool,
    batch_size: int = 8,
) -> _LayerStats:
    """Run TF and PyTorch on every NHWC batch and fold each listed layer's difference in."""
    model.eval()
    outputs: dict[str, torch.Tensor] = {}
    named = dict(model.named_modules())
    handles = [
        named[lt.module].register_forward_hook(partial(_keep_output, outputs, lt.module))
        for lt in layer_tensors
        if lt.module
    ]
    stats = _LayerStats()
    bar = tqdm(total=len(images), unit="img", desc="verify", disable=quiet, leave=False)
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            tf_values = runner.run(batch, [lt.tf_tensor for lt in layer_tensors])
            with torch.no_grad():
                logits = model(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))))
            for lt, tf_value in zip(layer_tensors, tf_values, strict=True):
                pt = (outputs[lt.module] if lt.module else logits).numpy()
                ref = np.asarray(tf_value, dtype=np.float32)
                if ref.ndim == 4 and data_format == "NHWC":
                    ref = ref.transpose(0, 3, 1, 2)
                stats.add(lt, pt, ref, len(batch))
            bar.update(len(batch))
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    return stats


def _layer_rows(
    layer_tensors: list[LayerTensor], stats: _LayerStats, tolerance: float
) -> list[LayerDiff]:
    """One row per layer: its worst difference relative to the layer's TF magnitude."""
    rows = []
    for lt in layer_tensors:
        max_abs = stats.max_abs.get(lt.layer, 0.0)
        rel = max_abs / max(stats.max_ref.get(lt.layer, 0.0), np.finfo(np.float32).tiny)
        rows.append(
            LayerDiff(
                layer=lt.layer,
                tf_tensor=lt.tf_tensor,
                shape=stats.shapes.get(lt.layer, []),
                max_abs_diff=max_abs,
                max_rel_diff=rel,
                within_tolerance=lt.layer not in stats.mismatched and rel <= tolerance,
                encoding=lt.encoding,
                **_similarity(stats.sums.get(lt.layer)),
            )
        )
    return rows


def _similarity(sums: np.ndarray | None) -> dict[str, float | None]:
    """SQNR (dB) and cosine similarity from the accumulated sums (None when unmeasured)."""
    if sums is None:
        return {"sqnr_db": None, "cosine": None}
    signal, noise, ours, dot = (float(v) for v in sums)
    # Capped so JSON stays standard: SQNR_CAP_DB means identical (or float64-level noise).
    sqnr = SQNR_CAP_DB if noise == 0 else min(SQNR_CAP_DB, 10 * np.log10(signal / noise))
    norms = np.sqrt(ours * signal)
    cosine = 1.0 if norms == 0 and noise == 0 else (dot / norms if norms else 0.0)
    return {"sqnr_db": round(sqnr, 3), "cosine": round(float(cosine), 7)}


def _image_agreements(
    names: list[str], tf_logits: np.ndarray, pt_logits: np.ndarray, tolerance: float
) -> list[ImageAgreement]:
    """Per-image top-1/top-5 agreement; near-ties within the tolerance count as agreeing."""
    image_rows = []
    for name, tf_row, pt_row in zip(names, tf_logits, pt_logits, strict=True):
        tie = tolerance * float(np.abs(tf_row).max())
        image_rows.append(
            ImageAgreement(
                image=name,
                tf_top1=int(np.argmax(tf_row)),
                torch_top1=int(np.argmax(pt_row)),
                top1_agree=topk_agree(tf_row, pt_row, 1, tie),
                top5_agree=topk_agree(tf_row, pt_row, 5, tie),
                max_abs_logit_diff=float(np.abs(tf_row - pt_row).max()),
            )
        )
    return image_rows


def _logit_failures(
    logits_row: LayerDiff, image_rows: list[ImageAgreement], tolerance: float
) -> list[str]:
    """The reasons the logits fail: too far apart, or top-1/top-5 differing on some image."""
    failures = []
    if not logits_row.within_tolerance:
        failures.append(
            f"logits differ by {logits_row.max_rel_diff:.3g} relative to their magnitude "
            f"(tolerance {tolerance:g})"
        )
    bad_top1 = [i.image for i in image_rows if not i.top1_agree]
    bad_top5 = [i.image for i in image_rows if not i.top5_agree]
    if bad_top1:
        failures.append(f"top-1 differs on {len(bad_top1)} images (first {bad_top1[0]})")
    if bad_top5:
        failures.append(f"top-5 differs on {len(bad_top5)} images (first {bad_top5[0]})")
    return failures


def compare_activations(
    model: nn.Module,
    runner: Any,
    layer_tensors: list[LayerTensor],
    data_format: str,
    images: np.ndarray,
    *,
    tolerance: float = 1e-4,
    quiet: bool = False,
) -> tuple[list[LayerDiff], _LayerStats]:
    """The one layer-by-layer comparison: ``model`` and a reference ``runner`` (TF's, or
    another PyTorch model's: ``.run(nhwc_batch, names) -> arrays``) on the same NHWC
    float32 ``images``; a row per listed layer, and the statistics behind the rows."""
    stats = _collect_stats(model, runner, layer_tensors, images, data_format, quiet)
    return _layer_rows(layer_tensors, stats, tolerance), stats


def compare_layers(
    model: nn.Module,
    runner: Any,
    layer_tensors: list[LayerTensor],
    data_format: str,
    names: list[str],
    images: np.ndarray,
    *,
    source: str = "images",
    tolerance: float = 1e-4,
    quiet: bool = False,
) -> VerificationResult:
    """Run TF and PyTorch on ``images`` (NHWC float32) and compare every listed layer."""
    rows, stats = compare_activations(
        model, runner, layer_tensors, data_format, images, tolerance=tolerance, quiet=quiet
    )
    logits_row = rows[-1]
    image_rows: list[ImageAgreement] = []
    if logits_row.layer in stats.mismatched:
        failures = [f"the logits have shape {logits_row.shape} in PyTorch but not in TF"]
    else:
        tf_logits = np.concatenate(stats.tf_logits)
        pt_logits = np.concatenate(stats.pt_logits)
        image_rows = _image_agreements(names, tf_logits, pt_logits, tolerance)
        failures = _logit_failures(logits_row, image_rows, tolerance)
    count = max(len(image_rows), 1)
    return VerificationResult(
        passed=not failures,
        source=source,
        num_images=len(image_rows),
        tolerance=tolerance,
        logits_max_abs_diff=logits_row.max_abs_diff,
        logits_max_rel_diff=logits_row.max_rel_diff,
        top1_agreement=sum(i.top1_agree for i in image_rows) / count,
        top5_agreement=sum(i.top5_agree for i in image_rows) / count,
        first_failing_layer=next((r.layer for r in rows if not r.within_tolerance), None),
        failures=failures,
        layers=rows,
        images=image_rows,
    )
