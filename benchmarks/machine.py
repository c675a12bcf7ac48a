"""The processor a benchmark ran on, so every figure can name it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from core.system import available_cores

CPUINFO = Path("/proc/cpuinfo")


def cpu_description() -> dict:
    """CPU model name, family/model numbers and widest vector unit; the usable logical CPUs
    and the physical cores under them (None when /proc/cpuinfo does not say).

    Virtual machines often report only "AMD EPYC" or "Intel Xeon": the family and model
    numbers and the AVX level tell the generations apart (their speeds differ a lot). Two
    logical CPUs may be one core's two hyperthreads, which share its multiply-add units.
    """
    try:
        blocks = [_fields(block) for block in CPUINFO.read_text().split("\n\n") if block.strip()]
    except OSError:
        blocks = []
    fields = blocks[0] if blocks else {}
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    details = (
        [f"family {fields['cpu family']} model {fields['model']}"] if "model" in fields else []
    )
    details += [vector] if vector else []
    described = f"{name} ({', '.join(details)})" if details else name
    return {"cpu": described, "cores": available_cores(), "physical_cores": _physical(blocks)}


def _fields(block: str) -> dict[str, str]:
    pairs = (line.partition(":") for line in block.splitlines())
    return {key.strip(): value.strip() for key, _, value in pairs}


def _physical(blocks: list[dict[str, str]]) -> int | None:
    """Distinct (package, core) pairs among the processors this process may run on."""
    usable = (
        {str(cpu) for cpu in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
    )
    cores = {
        (block.get("physical id"), block["core id"])
        for block in blocks
        if "core id" in block and (usable is None or block.get("processor") in usable)
    }
    return len(cores) or None


def describe_cores(system: dict) -> str:
    """ "2 cores", or "2 logical CPUs on 1 physical core" when hyperthreads share cores."""
    logical, physical = system["cores"], system.get("physical_cores")
    if physical is None or physical == logical:
        return f"{logical} cores"
    return f"{logical} logical CPUs on {physical} physical core{'s' if physical > 1 else ''}"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
