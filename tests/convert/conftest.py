"""Fixtures shared by the convert tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A two-image MobileNet-v1 preprocess cache, for runs of ``python -m eval``."""
    from fixtures.images import write_val_set
    from preprocess import build_cache

    root = tmp_path_factory.mktemp("tiny_cache")
    write_val_set(root / "val", 2, layout="val_map", seed=11)
    build_cache("mobilenet_v1", root / "val", root / "cache", workers=1, quiet=True)
    return root / "cache"
