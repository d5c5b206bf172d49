"""What ran a benchmark: the CPU by name, family and the vector extensions that decide its speed ratios."""

from __future__ import annotations

import os
import platform
from pathlib import Path

VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16",
                "amx_tile", "sve", "asimd")


def machine() -> dict:
    """{"cpus", "processor" (model name), "cpu_family", "model", "vector_extensions", "load_avg"} (Linux
    /proc/cpuinfo; elsewhere what `platform` knows)."""
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key and key not in info:
                info[key] = value.strip()
            if not line.strip() and info:
                break  # the first processor's block is enough
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {"cpus": os.cpu_count(), "processor": info.get("model name") or platform.processor() or platform.machine(),
            "cpu_family": info.get("cpu family"), "model": info.get("model"),
            "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
