"""Fixtures shared by the eval tests."""

import hashlib
import sys
import types
from pathlib import Path

import pytest

from tests.eval.fakes import ToyNet


@pytest.fixture
def toy_convert(monkeypatch, tmp_path):
    """A weights file plus a ``convert.api`` whose load_checkpoint returns a ToyNet."""
    weights = tmp_path / "toy.pth"
    weights.write_bytes(b"toy weights")
    import convert  # noqa: F401  (the package first: its __init__ reads the real convert.api)

    fake = types.ModuleType("convert.api")
    record = {"model_name": "resnet50", "num_classes": 1001, "label_offset": 1}

    def load_checkpoint(path, expected_model=None):  # the real one's record: + file_sha256
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return ToyNet(seed=3).eval(), {**record, "file_sha256": digest}

    fake.load_checkpoint = load_checkpoint
    monkeypatch.setitem(sys.modules, "convert.api", fake)
    return weights
