"""The processor a benchmark ran on, so every figure can name it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from core.system import available_cores

CPUINFO = Path("/proc/cpuinfo")


def cpu_description() -> dict:
    """CPU model name, family/model numbers and widest vector unit, and the usable cores.

    Virtual machines often report only "AMD EPYC" or "Intel Xeon": the family and model
    numbers and the AVX level tell the generations apart (their speeds differ a lot).
    """
    fields: dict[str, str] = {}
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    details = (
        [f"family {fields['cpu family']} model {fields['model']}"] if "model" in fields else []
    )
    details += [vector] if vector else []
    described = f"{name} ({', '.join(details)})" if details else name
    return {"cpu": described, "cores": available_cores()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
