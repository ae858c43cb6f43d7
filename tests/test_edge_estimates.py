"""bench.edge_estimates: the op counts against a hand computation, and the report renders (no timing)."""

from __future__ import annotations

import json

import pytest

from bench import edge_estimates as ee

SMALL = ee.Shape(layers=2, hidden=4, ffn=8, head_out=3)
EPYC = {"cpu": "AMD EPYC", "cores": 2,
        "simd": {"avx2": True, "fma": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False}}


def _levers(machine: dict = EPYC) -> dict:
    """The parts of bench/results/levers.json that the estimate reads, with made-up figures."""
    return {"date": "2026-12-06", "measured": {"int8_graph": {"date": "2026-12-06", "machine": machine},
                                               "session_settings": {"machine": machine}},
            "int8_graph": {"variants": [
                {"variant": "before", "p50_ms": 25.0, "titles_per_s_b32": 60.0},
                {"variant": "the graph (shipped)", "p50_ms": 20.0, "titles_per_s_b32": 80.0},
                {"variant": "floor: matmuls alone", "p50_ms": 14.0, "titles_per_s_b32": "-"}]},
            "session_settings": [
                {"precision": "fp32", "setting": "1 thread", "p50_ms": 40.0, "titles_per_s_b8": 30.0},
                {"precision": "int8", "setting": "1 thread", "p50_ms": 30.0, "titles_per_s_b8": 50.0},
                {"precision": "int8", "setting": "optimization all (default)", "p50_ms": 20.0,
                 "titles_per_s_b8": 75.0}]}


def test_title_macs_small_config_by_hand():
    # per layer: Q, K, V, out 4x4 each (64) + FFN 4x8 (32) + 8x4 (32) = 128 weights
    assert ee.title_macs(5, SMALL) == {"int8_weight_matmuls": 2 * 5 * 128,  # layers x tokens x weights
                                       "fp32_attention": 2 * 2 * 5 * 5 * 4,  # layers x (QK^T + PV) x t x t x hidden
                                       "fp32_head": 4 * 3}
    assert ee.title_macs(5, SMALL, sequence=7)["fp32_attention"] == 2 * 2 * 5 * 7 * 4


def test_title_macs_jobbert_formula():
    macs = ee.title_macs(10)
    assert macs["int8_weight_matmuls"] == 12 * 10 * 768 * (3 * 768 + 768 + 2 * 3072)
    assert macs["fp32_head"] == 768 * 1024


def test_streamed_bytes_small_config_and_the_measured_floor():
    assert ee.streamed_bytes(SMALL) == {
        "int8_weights": 2 * 128,
        "fp32_column_scales": 4 * 2 * (4 * 4 + 8 + 4),  # one scale per output column
        "fp32_layer_vectors": 4 * 2 * ((4 + 4) * 4 + (4 + 8) + (8 + 4) + 4 * 4),  # SmoothQuant, bias, LayerNorms
        "fp32_head": 4 * (4 * 3 + 3)}
    jobbert = ee.streamed_bytes()
    # bench.levers' floor graph (the 48 int8 matmuls with their scales, nothing else) measured 85.3 MB
    assert abs(jobbert["int8_weights"] + jobbert["fp32_column_scales"] - 85.3e6) < 0.1e6


def test_amdahl_and_device_seconds():
    assert ee.amdahl_serial(2.0, 1.0) == 0.0
    assert ee.amdahl_serial(1.0, 1.0) == 1.0
    # the x86 core against itself, one thread: its own time
    assert ee.device_seconds(0.03, 0.7, 3.0, ee.ZEN3, 3.0, 64, 1.0, 0.35, 1) == pytest.approx(0.03)
    # twice the int8 peak halves only the matmul share
    assert ee.device_seconds(0.03, 0.7, 3.0, ee.ZEN3, 3.0, 128, 1.0, 0.0, 1) == pytest.approx(0.03 * (0.35 + 0.3))


def test_read_anchor_refuses_another_cpu():
    anchor = ee.read_anchor(_levers())
    assert (anchor.p50_ms, anchor.floor_p50_ms, anchor.titles_per_s_b32) == (20.0, 14.0, 80.0)
    assert anchor.matmul_share_b1 == pytest.approx(0.7)
    vnni = {**EPYC, "cpu": "Intel Xeon", "simd": {**EPYC["simd"], "avx512f": True, "avx512_vnni": True}}
    with pytest.raises(ValueError, match="AVX2"):
        ee.read_anchor(_levers(vnni))


def test_report_renders(tmp_path):
    levers = tmp_path / "levers.json"
    levers.write_text(json.dumps(_levers()), encoding="utf-8")
    assert ee.main(["--levers", str(levers), "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "edge_estimates.json").read_text(encoding="utf-8"))
    markdown = (tmp_path / "edge_estimates.md").read_text(encoding="utf-8")
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0] == ("| device | cores | int8 peak GOP/s/core (source) | bandwidth GB/s (source) | "
                        "est. p50 1 title (ms) | est. titles/s @32 (all cores) | bound by |")
    assert "20.0 (measured)" in table[1] and "80 (measured)" in table[1]
    assert len(result["rows"]) == 6  # Pi 4 and Pi 5 on 1 and 4 cores, one vCPU of each Graviton
    for device in ee.DEVICES:
        assert device.name in markdown
    for row in result["rows"]:
        assert row["p50_ms"][0] <= row["p50_ms"][1] and row["titles_per_s_b32"][0] <= row["titles_per_s_b32"][1]
    pi4 = {row["cores"]: row for row in result["rows"] if row["device"] == "Raspberry Pi 4"}
    assert pi4[4]["p50_ms"][1] < pi4[1]["p50_ms"][1]  # more cores, less time
    assert "assumed (no --data)" in markdown and "Every device figure below is an estimate" in markdown
