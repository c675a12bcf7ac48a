"""Stage stamps: the inputs a stage's last successful run consumed, so a rerun can skip it.

A stamp is written atomically and only after the stage finished, so a killed run never
leaves one that claims work was done. It records its outputs' sha256 too: an output edited
or replaced since (another conversion's model.pth, say) redoes the stage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.files import sha256_file, write_text_atomic


class StageStamp:
    def __init__(
        self, stamp_dir: str | os.PathLike, stage: str, sha256: Callable[[Path], str] = sha256_file
    ):
        self.path = Path(stamp_dir) / f"{stage}.json"
        self._sha256 = sha256

    def is_current(self, inputs: dict[str, Any], outputs: list[str | os.PathLike]) -> bool:
        """Whether the stamp records these inputs and every output, unchanged."""
        try:
            recorded = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if recorded.get("inputs") != _jsonable(inputs):
            return False
        if not all(Path(p).is_file() for p in outputs):
            return False
        return recorded.get("outputs") == self._digests(outputs)

    def record(self, inputs: dict[str, Any], outputs: list[str | os.PathLike]) -> None:
        payload = {"inputs": _jsonable(inputs), "outputs": self._digests(outputs)}
        write_text_atomic(self.path, json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def _digests(self, outputs: list[str | os.PathLike]) -> dict[str, str]:
        return {str(p): self._sha256(Path(p)) for p in outputs}


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so recorded and fresh inputs compare equal (tuples → lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
