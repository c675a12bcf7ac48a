"""Per-tensor activation ranges from histograms collected on the calibration batches.

Two passes over the calibration data: the first finds each tensor's min and max, the
second fills a fixed histogram over [min(lo, 0), max(hi, 0)]. A method then picks the
clipping range [lo, hi] from that histogram:

- ``minmax``: the observed extremes.
- ``percentile``: the 0.01 % tails cut off (each side that is not zero).
- ``mse``: the range, among shrinks of [min, max] towards zero, whose uniform quantizer
  has the least expected squared error (bin centres stand in for their values).
- ``entropy``: TensorRT-style: the range whose quantized distribution has the least
  Kullback-Leibler divergence from the clipped distribution.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .scheme import check_method

HISTOGRAM_BINS = 2048
PERCENTILE = 99.99
CANDIDATES = 256  # range shrinks searched by mse and entropy: f = k / CANDIDATES
MAX_CLIPPED = 0.01  # entropy: the largest share of values a range may clip


def to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32, the precision the kernels use."""
    return float(np.float32(value))


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point of an asymmetric unsigned ``bits`` quantizer covering [lo, hi]
    (widened to include 0, so that zero, the padding value, is exact)."""
    levels = 2**bits - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        hi = lo + 1e-12
    scale = to_float32((hi - lo) / levels)
    zero_point = int(min(max(round(-lo / scale), 0), levels))
    return scale, zero_point


class HistogramObserver:
    """Min/max (pass 1), then a histogram on the fixed range they give (pass 2)."""

    def __init__(self, bins: int = HISTOGRAM_BINS):
        self.bins = bins
        self.min, self.max = math.inf, -math.inf
        self.counts: torch.Tensor | None = None
        self.lo = self.hi = 0.0

    def observe_minmax(self, x: torch.Tensor) -> None:
        x = x.detach()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def start_histogram(self) -> None:
        self.lo, self.hi = min(self.min, 0.0), max(self.max, 0.0)
        if self.hi - self.lo < 1e-12:
            self.hi = self.lo + 1e-12
        self.counts = torch.zeros(self.bins, dtype=torch.float64)

    def observe_histogram(self, x: torch.Tensor) -> None:
        assert self.counts is not None, "start_histogram first"
        x = x.detach().float().clamp(self.lo, self.hi)
        self.counts += torch.histc(x, self.bins, self.lo, self.hi).double()

    @property
    def signed(self) -> bool:
        return self.lo < 0.0

    def choose(self, method: str, bits: int) -> tuple[float, float]:
        """The clipping range [lo, hi] that ``method`` picks for ``bits``-bit activations."""
        check_method(method)
        if self.counts is None:
            return min(self.min, 0.0), max(self.max, 0.0)
        counts = self.counts.numpy()
        if method == "minmax" or counts.sum() == 0:
            return self.lo, self.hi
        if method == "percentile":
            return self._percentile(counts, PERCENTILE)
        fractions = np.arange(1, CANDIDATES + 1) / CANDIDATES
        if method == "mse":
            errors = self._mse(counts, fractions, bits)
        else:
            errors = self._kl(counts, fractions, bits)
        best = float(fractions[int(np.argmin(errors))])
        return self.lo * best, self.hi * best

    # -- methods -----------------------------------------------------------------------
    def _edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def _quantile(self, counts: np.ndarray, q: float) -> float:
        cumulative = np.cumsum(counts) / counts.sum()
        index = int(np.searchsorted(cumulative, q))
        index = min(index, self.bins - 1)
        before = cumulative[index - 1] if index > 0 else 0.0
        inside = (q - before) / max(cumulative[index] - before, 1e-300)
        edges = self._edges()
        return float(edges[index] + min(max(inside, 0.0), 1.0) * (edges[index + 1] - edges[index]))

    def _percentile(self, counts: np.ndarray, percent: float) -> tuple[float, float]:
        hi = self._quantile(counts, percent / 100.0) if self.hi > 0 else 0.0
        lo = self._quantile(counts, 1.0 - percent / 100.0) if self.lo < 0 else 0.0
        return min(lo, 0.0), max(hi, 0.0)

    def _mse(self, counts: np.ndarray, fractions: np.ndarray, bits: int) -> np.ndarray:
        edges = self._edges()
        centres = torch.from_numpy((edges[:-1] + edges[1:]) / 2)[None, :]
        weights = torch.from_numpy(counts)[None, :]
        lo = torch.from_numpy(self.lo * fractions)[:, None]
        hi = torch.from_numpy(self.hi * fractions)[:, None]
        levels = 2**bits - 1
        scale = ((hi - lo) / levels).clamp_min(1e-30)
        zero_point = torch.round(-lo / scale).clamp(0, levels)
        codes = torch.clamp(torch.round(centres / scale) + zero_point, 0, levels)
        error = ((codes - zero_point) * scale - centres) ** 2
        return (error * weights).sum(dim=1).numpy()

    def _kl(self, counts: np.ndarray, fractions: np.ndarray, bits: int) -> np.ndarray:
        levels = 2**bits
        zero_bin = (0.0 - self.lo) / (self.hi - self.lo) * self.bins
        if self.lo == 0.0:
            # After a ReLU most values are exactly 0, which every range represents exactly:
            # left in, that spike dominates the divergence and pulls the range in.
            counts = counts.copy()
            counts[0] = 0.0
        errors = np.full(len(fractions), np.inf)
        if levels * 2 > self.bins:  # too few bins to tell ranges apart: keep the full range
            errors[-1] = 0.0
            return errors
        total = counts.sum()
        for k, fraction in enumerate(fractions):
            start = int(round(zero_bin * (1.0 - fraction)))
            stop = int(round(zero_bin + fraction * (self.bins - zero_bin)))
            # KL is blind to where the clipped values go once they pile into one edge bin:
            # for values far from zero (a pooled head input) it would clip nearly all of
            # them. Calibration clips tails, so a range may clip at most MAX_CLIPPED of them.
            if counts[:start].sum() + counts[stop:].sum() > MAX_CLIPPED * total:
                continue
            # TensorRT starts its search at 128 of 2048 bins: fewer bins than that make
            # coarse ranges look lossless (each bin its own level)
            if stop - start < max(levels, self.bins // 16):
                continue
            errors[k] = _kl_divergence(counts, start, stop, levels)
        if not np.isfinite(errors).any():
            errors[-1] = 0.0
        return errors


def _kl_divergence(counts: np.ndarray, start: int, stop: int, levels: int) -> float:
    """KL(P || Q): P the histogram clipped to bins [start, stop) (outliers piled into the
    edge bins), Q the bins inside merged into ``levels`` groups and spread back uniformly
    over each group's non-empty bins. Q is made from the bins inside only, without the
    piled outliers (as TensorRT does): that is what makes clipping cost something; with
    them in Q the narrowest range always looked best."""
    inside = counts[start:stop]
    if inside.sum() == 0:  # every value clipped: Q would be nothing but the pile
        return math.inf
    reference = inside.copy()
    reference[0] += counts[:start].sum()
    reference[-1] += counts[stop:].sum()
    groups = np.linspace(0, len(inside), levels + 1).round().astype(int)
    nonzero = inside > 0
    group_sums = np.add.reduceat(inside, groups[:-1])
    group_nonzero = np.add.reduceat(nonzero.astype(np.float64), groups[:-1])
    spread = np.where(group_nonzero > 0, group_sums / np.maximum(group_nonzero, 1), 0.0)
    expanded = np.repeat(spread, np.diff(groups)) * nonzero
    # the piled-up outliers live in edge bins that may be empty inside: count them there
    expanded = np.where((reference > 0) & (expanded == 0), 1e-12, expanded)
    p = reference / reference.sum()
    q = expanded / max(expanded.sum(), 1e-300)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
