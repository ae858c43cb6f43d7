"""What machine a benchmark ran on: CPU model, cores, SIMD flags and library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "numpy", "tokenizers", "torch", "sentence-transformers",
             "transformers", "onnx")


def _cpuinfo() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return {}
    info: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags") and key not in info:
            info[key] = value.strip()
    return info


def machine_info() -> dict:
    """A JSON-ready description of this machine and the installed versions that matter."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": info.get("model name", platform.processor() or "unknown"),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "simd": {flag: flag in flags for flag in _FLAGS},
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "versions": versions,
    }
