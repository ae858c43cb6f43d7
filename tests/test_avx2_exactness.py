"""The int8 weights the exporter writes give exact uint8 x int8 sums on AVX2 CPUs without VNNI.

This machine has VNNI, so the check runs onnxruntime under qemu emulating a Haswell CPU
(`apt-get install qemu-user-static`); without qemu the test skips. A control run with plain
8-bit weights must come out wrong, which proves the emulated CPU really takes the AVX2 kernel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobbert_onnx.export import int8

QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
CHECK = Path(__file__).resolve().parents[1] / "bench" / "avx2_exactness.py"

pytestmark = [pytest.mark.full,  # the exporter's int8 weights, under an emulated CPU
              pytest.mark.skipif(QEMU is None, reason="needs qemu-user (apt-get install qemu-user-static)")]


def _check(*args: str) -> subprocess.CompletedProcess:
    command = [QEMU, "-cpu", "Haswell", sys.executable, str(CHECK), "--inputs", "adversarial,random",
               "--b-source", "initializer", "--a-zero-points", "128,0", "--M", "1,7", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_exported_8_bit_weights_are_exact_on_emulated_avx2(tmp_path):
    rng = np.random.default_rng(0)
    weights = {"gaussian": rng.normal(size=(768, 64)), "heavy_tailed": rng.standard_t(3, size=(768, 64))}
    for name, weight in weights.items():
        quantized, _ = int8.quantize_weight(weight.astype(np.float32), 8)
        path = tmp_path / f"{name}.npy"
        np.save(path, quantized)
        run = _check("--weights", "file", "--weights-file", str(path))
        assert "AVX2=1" in run.stdout and "AVX512VNNI=0" in run.stdout, run.stdout
        assert run.returncode == 0, f"{name}: {run.stdout[-2000:]}{run.stderr[-2000:]}"


def test_plain_8_bit_weights_saturate_on_emulated_avx2():
    run = _check("--weights", "int8", "--K", "768", "--N", "64")
    assert run.returncode == 1 and "exact=False" in run.stdout, run.stdout[-2000:]
