import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.records import Record, json_value


@dataclass
class _Inner(Record):
    value: np.float32


@dataclass
class _Outer(Record):
    _not_json = ("model",)
    out_dir: Path
    counts: np.ndarray
    inner: _Inner
    rows: list = field(default_factory=list)
    model: object = None


def test_to_json_gives_plain_values_and_drops_named_fields():
    record = _Outer(
        out_dir=Path("/tmp/x"),
        counts=np.array([1, 2], dtype=np.int64),
        inner=_Inner(np.float32(0.5)),
        rows=[(np.int64(3), "a")],
        model=object(),
    )
    data = record.to_json()
    assert data == {
        "out_dir": "/tmp/x",
        "counts": [1, 2],
        "inner": {"value": 0.5},
        "rows": [[3, "a"]],
    }
    assert type(data["counts"][0]) is int and type(data["inner"]["value"]) is float
    json.dumps(data)  # would raise on any numpy or Path value left behind


def test_json_value_leaves_plain_values_alone():
    assert json_value({"a": None, "b": True, 1: "x"}) == {"a": None, "b": True, "1": "x"}
