"""Small stand-ins for the cache and for a converted model, shared by the eval tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.profiles import get_profile
from eval.backends import Backend

NUM_CLASSES = 1001


class FakeCache:
    """What eval needs from ``preprocess.load_cache``: read(), labels, files, len()."""

    def __init__(self, n: int = 23, seed: int = 0, fingerprint: str = "f" * 64):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
        self.images.flags.writeable = False  # like the read-only memmap
        self.labels = rng.integers(0, 1000, size=n).astype(np.int64)
        self.files = [f"img_{i:05d}.JPEG" for i in range(n)]
        self.manifest = {"model": "resnet50", "count": n}
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Crops ``start:stop`` (copied into ``out`` when given), like the cache's reader."""
        crops = self.images[start:stop]
        if out is None:
            return np.array(crops)
        np.copyto(out, crops)
        return out


def toy_logits(u8_nhwc: np.ndarray, seed: int = 1) -> np.ndarray:
    """Deterministic per-image logits: a fixed projection of the channel means."""
    weights = np.random.default_rng(seed).standard_normal((3, NUM_CLASSES))
    means = u8_nhwc.reshape(len(u8_nhwc), -1, 3).mean(axis=1)
    return ((means - 127.5) @ weights).astype(np.float32)


class ToyBackend(Backend):
    """A numpy backend whose logits depend only on each image, never on the batch."""

    name = "toy"

    def __init__(self, model_name: str = "resnet50"):
        super().__init__(get_profile(model_name), "cpu")
        self.batch_sizes: list[int] = []

    def logits(self, u8_nhwc: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(u8_nhwc))
        return toy_logits(u8_nhwc)


class ToyNet(nn.Module):
    """NCHW float32 in, [N, 1001] logits out, like the converted models."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.fc = nn.Linear(8, NUM_CLASSES)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        self.last_input: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_input = x.detach().clone()
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def accuracy(logits, labels, label_offset: int):
    """Top-1 / top-5 of a whole set of logits in one call, the way evaluation counts them."""
    from eval.metrics import AccuracyCounter, labels_from_classes, top_k_classes

    counter = AccuracyCounter()
    counter.update(labels_from_classes(top_k_classes(logits), label_offset), labels)
    return counter
