"""What the stages of one pipeline run have produced so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.files import sha256_file
from core.profiles import ModelProfile
from eval.distributed import DistContext


@dataclass
class RunState:
    """What the stages produced so far, and which of them did work this time."""

    profile: ModelProfile
    model_dir: Path
    checkpoint: Path | None = None
    cache_dir: Path | None = None
    cache_fingerprint: str | None = None
    calibration_cache: Path | None = None  # None: the first images of the evaluation cache
    calibration_list: dict[str, Any] | None = None  # the list file a calibration cache holds
    weights: Path | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped"
    using_sample: bool = False
    ctx: DistContext = field(default_factory=DistContext)  # torchrun's ranks, if any
    _digests: dict[tuple, str] = field(default_factory=dict)

    def sha256(self, path: Path) -> str:
        """sha256 of a file, computed once per run (several stages stamp the same file)."""
        st = Path(path).stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(path)
        return self._digests[key]
