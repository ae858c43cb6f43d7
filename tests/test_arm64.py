"""The runtime on ARM64: artifacts exported here (x86) run under qemu's aarch64 user-mode
emulation on a Cortex-A72 (Raspberry Pi 4: ARMv8.0, no dot product) and a Neoverse-N1 (AWS
Graviton2: dot product), with an aarch64 Python from Debian's packages and the aarch64 wheels
from PyPI (bench/arm64.py builds it). Skips, saying why, when qemu-user-static or debootstrap is
missing or the packages cannot be downloaded.

The bar (the edge issue): fp32 within 0.99999 of x86 fp32; int8 within 0.99 of x86 fp32 and
0.999 of x86 int8; int8 batch invariant on the ARM kernels, here bit for bit; no illegal
instruction; and proof of which int8 kernel ran: dot-product instructions on Neoverse-N1 only.
Controls exported without padded attention rows, a whole model and each attention form alone,
must not give the same bits on ARM, which shows that the emulated kernels are the ones that
need the padding (export/attention_rows.py). The CLI's CPU probe is not run here: without
binfmt_misc, an emulated process cannot start another aarch64 one (tests/test_cpu_probe.py
covers it with fake builds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.arm64 import CPU_MODELS, Arm64Python, Arm64Unavailable, compare, embed, embed_here, export_unpadded

from jobbert_onnx.export.attention_rows import pad_attention_rows

pytestmark = pytest.mark.full  # exports real MiniLM weights

PROBES, BATCH = 12, 8
CHECK = Path(__file__).with_name("arm64_attention_check.py")


@pytest.fixture(scope="module")
def arm64(tmp_path_factory) -> Arm64Python:
    try:
        return Arm64Python.build(tmp_path_factory.mktemp("arm64"))
    except Arm64Unavailable as exc:
        pytest.skip(f"ARM64 emulation unavailable here: {exc}")


@pytest.fixture(scope="module")
def titles(job_titles) -> list[str]:
    """A spread of the fixture titles over every language, short and long."""
    return job_titles[:: max(1, len(job_titles) // 40)][:40]


@pytest.mark.parametrize("cpu", list(CPU_MODELS))
def test_fp32_and_int8_on_emulated_arm_match_x86(arm64, cpu, exported, titles, tmp_path):
    artifacts = {p: exported("minilm_model", p) for p in ("fp32", "int8")}
    x86 = {p: embed_here(a, titles, PROBES, BATCH) for p, a in artifacts.items()}
    int8 = embed(arm64, cpu, artifacts["int8"], titles, tmp_path, PROBES, BATCH, log_translation=True)
    # fp32 runs three times slower emulated, and its bar is plain agreement: fewer titles
    fp32 = embed(arm64, cpu, artifacts["fp32"], titles[:16], tmp_path, 4, BATCH)
    assert fp32["report"]["machine"] == "aarch64"
    fp32_here = embed_here(artifacts["fp32"], titles[:16], 4, BATCH)
    assert compare(fp32, fp32_here, fp32_here)["vs_x86_same_precision"] >= 0.99999
    figures = compare(int8, x86["int8"], x86["fp32"])
    assert figures["vs_x86_fp32"] >= 0.99 and figures["vs_x86_same_precision"] >= 0.999, figures
    assert figures["invariant_bit_for_bit"], figures
    has_dot = cpu == "neoverse-n1"
    assert int8["report"]["asimddp"] is has_dot
    assert (int8["dot_instructions"] > 0) is has_dot, int8["dot_instructions"]


def test_int8_without_padded_attention_rows_loses_the_same_bits_on_arm(arm64, minilm_model, titles, tmp_path):
    control = export_unpadded(minilm_model, tmp_path / "unpadded")
    here = embed_here(control, titles, PROBES, BATCH)
    # x86's kernels need no padding: at most the last bit of the pooled sums moves, no rounding flips
    assert np.abs(here["alone"] - here["batched"]).max() <= 1e-6
    run = embed(arm64, "neoverse-n1", control, titles, tmp_path, PROBES, BATCH)
    # Here the softmax's last bits reach the pooled sums without flipping a rounding on these
    # titles; on MPNet they flip them (0.9995, bench/results/arm64.md).
    assert not np.array_equal(run["alone"], run["batched"])


@pytest.mark.parametrize("kind", ["mha", "softmax"])
def test_padded_attention_rows_give_the_same_bits_alone_and_batched_on_emulated_arm(arm64, kind, tmp_path):
    """Both forms export/attention_rows.py pads, one node each: padded, a row gives the same bits
    alone and last in a padded batch on ARM; unpadded, it does not (what the padding is for)."""
    from .test_attention_rows import _mha, _softmax

    build = {"mha": _mha, "softmax": _softmax}[kind]
    padded = build()
    pad_attention_rows(padded)
    differ = {}
    for name, model in (("padded", padded), ("unpadded", build())):
        path = tmp_path / f"{kind}-{name}.onnx"
        path.write_bytes(model.SerializeToString())
        run = arm64.run("neoverse-n1", [str(CHECK), str(path), kind], timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        differ[name] = json.loads(run.stdout.strip().splitlines()[-1])
    assert differ["padded"] == [] and differ["unpadded"], differ
