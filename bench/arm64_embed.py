"""Embed titles with an artifact, for `bench/arm64.py`: run by the emulated aarch64 Python (with
only this package's runtime, onnxruntime, tokenizers and numpy), and by x86 for comparison.

    python arm64_embed.py ARTIFACT TITLES_FILE OUT.npz PROBES BATCH

OUT.npz holds 'all' (every title, in batches of 32), 'alone' (the first PROBES titles, one at a
time) and 'batched' (each probe last in a batch with the BATCH - 1 longest titles, so that it is
padded). The last line of stdout is a JSON report of the CPU as the process sees it.
"""

from __future__ import annotations

import ctypes
import json
import platform
import sys
from pathlib import Path

import numpy as np

_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP_ASIMDDP, _HWCAP2_I8MM = 1 << 20, 1 << 13  # Linux arm64 uapi hwcap.h


def embeddings(artifact: Path, titles: list[str], probes: int, batch: int) -> dict[str, np.ndarray]:
    """The pooled embeddings described in the module docstring."""
    from jobbert_onnx.runtime import Embedder

    embedder = Embedder(artifact)
    alone = embedder.encode_pooled(titles[:probes], batch_size=1)
    longest = sorted(titles, key=len)[-(batch - 1):]
    batched = np.concatenate([embedder.encode_pooled([*longest, t], batch_size=batch)[-1:] for t in titles[:probes]])
    return {"all": embedder.encode_pooled(titles, batch_size=32), "alone": alone, "batched": batched}


def cpu_report() -> dict:
    """The machine, onnxruntime's version and the dot-product and i8mm bits of the kernel's HWCAP."""
    import onnxruntime

    report = {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__}
    if platform.machine() == "aarch64":
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        report["asimddp"] = bool(getauxval(_AT_HWCAP) & _HWCAP_ASIMDDP)
        report["i8mm"] = bool(getauxval(_AT_HWCAP2) & _HWCAP2_I8MM)
    return report


def main() -> None:
    artifact, titles_file, out, probes, batch = sys.argv[1:6]
    titles = Path(titles_file).read_text(encoding="utf-8").splitlines()
    np.savez(out, **embeddings(Path(artifact), titles, int(probes), int(batch)))
    print(json.dumps(cpu_report()))


if __name__ == "__main__":
    main()
