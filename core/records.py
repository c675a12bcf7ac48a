"""One way for every result dataclass to become JSON: paths as strings, numpy scalars and
arrays as Python numbers and lists."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np


def json_value(value: Any) -> Any:
    """``value`` as something ``json.dumps`` accepts, recursing into containers."""
    if isinstance(value, Record):  # its own fields only (``_not_json`` left out)
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Record:
    """Mixin for result dataclasses: ``to_json()`` gives every field as plain JSON values,
    except those (a model, raw arrays) a subclass names in ``_not_json``."""

    _not_json: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: json_value(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name not in self._not_json
        }
