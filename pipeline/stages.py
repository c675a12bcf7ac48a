"""Stage stamps: the inputs a stage's last successful run consumed, so a rerun can skip it.

A stamp is written atomically and only after the stage finished, so a killed run never
leaves one that claims work was done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.files import write_text_atomic


class StageStamp:
    def __init__(self, stamp_dir: str | os.PathLike, stage: str):
        self.path = Path(stamp_dir) / f"{stage}.json"

    def is_current(self, inputs: dict[str, Any], outputs: list[str | os.PathLike]) -> bool:
        """Whether the stamp records these inputs and every output still exists."""
        try:
            recorded = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if recorded.get("inputs") != _jsonable(inputs):
            return False
        return all(Path(p).exists() for p in outputs)

    def record(self, inputs: dict[str, Any], outputs: list[str | os.PathLike]) -> None:
        payload = {"inputs": _jsonable(inputs), "outputs": [str(p) for p in outputs]}
        write_text_atomic(self.path, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so recorded and fresh inputs compare equal (tuples → lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
