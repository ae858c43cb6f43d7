"""bench/: the workload reader, the token accounting behind the roofline, the target checks, the
peers' model folders and the README update, on small made-up inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from bench import peers, report, roofline, speed_report
from bench.workload import DataError, load_tasks, skill_lists, unique_titles


def _language(folder: Path, queries: dict[str, str], corpus: dict[str, str], pairs: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True)
    (folder / "queries.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in queries.items()), encoding="utf-8")
    (folder / "corpus_documents.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in corpus.items()), encoding="utf-8")
    (folder / "annotations.tsv").write_text("".join(f"{q}\t0\t{d}\t1\n" for q, d in pairs), encoding="utf-8")


def test_workload_reads_all_languages_and_dedups(tmp_path: Path) -> None:
    for language in ("en", "de", "es", "zh"):
        _language(tmp_path / language, {"q1": "Nurse"}, {"c1": " Nurse ", "c2": f"Chef {language}"}, [("q1", "c1")])
    tasks = load_tasks(tmp_path)
    assert [t.language for t in tasks] == ["en", "de", "es", "zh"] and tasks[0].relevant == {"q1": {"c1"}}
    titles = unique_titles(tasks)
    assert sorted(titles) == sorted({"Nurse", "Chef en", "Chef de", "Chef es", "Chef zh"})
    assert unique_titles(tasks) == titles  # the shuffle is seeded
    lists = skill_lists(titles, 3)
    assert len(lists) == 3 and all(len(s) >= 600 for s in lists)


def test_workload_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        load_tasks(tmp_path / "missing")
    _language(tmp_path / "en", {"q1": "Nurse"}, {"c1": "Nurse"}, [])
    (tmp_path / "en" / "annotations.tsv").write_text("q1\n", encoding="utf-8")
    with pytest.raises(DataError, match="annotations.tsv: line 1"):
        load_tasks(tmp_path, ("en",))
    (tmp_path / "en" / "annotations.tsv").write_text("q1\t0\tc1\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match="de.queries.tsv: missing"):
        load_tasks(tmp_path, ("en", "de"))


def test_padded_tokens_follow_token_sorted_batches() -> None:
    lengths = [2, 5, 3, 4]  # sorted by tokens, as the runtime batches them: 5 4 | 3 2
    tokens, sequence = roofline.padded_tokens(lengths, 2)
    assert tokens == 2 * 5 + 2 * 3  # (5, 4) padded to 5, (3, 2) padded to 3
    assert sequence == pytest.approx((2 * 25 + 2 * 9) / 16)


def test_layer_matmul_times_run_every_layer_with_its_own_weights() -> None:
    # 2 layers of a tiny encoder: 12 matmuls, 2 x (4 x 8 x 8 + 2 x 8 x 16) multiply-adds per row
    assert roofline.layer_ops(3, hidden=8, ffn=16) == 2 * 3 * (4 * 64 + 2 * 128)
    graph = onnx.load_from_string(roofline._layer_graph(roofline.layer_shapes(8, 16) * 2, "int8"))
    weights = [i for i in graph.graph.initializer if i.name != "zp"]
    assert len(graph.graph.node) == 12 and len({i.name for i in weights}) == 12
    times = roofline.layer_matmul_times("int8", 3, hidden=8, ffn=16, seconds=0.05, threads=1, layers=2)
    assert times and all(t > 0 for t in times)


def test_int4_layer_graph_computes_its_blocks() -> None:
    import onnxruntime as ort
    from onnx import numpy_helper

    # One layer of a tiny encoder as MatMulNBits: the output is x @ (scale x (code - 8)) per block of 32 along K.
    graph = roofline._layer_graph([(64, 8)], "int4")
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(graph).graph.initializer}
    packed, scales = weights["w0_nbits"], weights["w0_nbits_scale"].reshape(8, 2)
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(8, 2, 32).astype(np.float32)
    dense = ((codes - 8) * scales[..., None]).reshape(8, 64).T
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    y = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"x0": x})[0]
    assert np.allclose(y, x @ dense, rtol=0.02, atol=0.02 * np.abs(x @ dense).max())
    assert roofline.layer_weight_bytes("int4", 64, 128) == (4 * 64 * 64 + 2 * 64 * 128) * (0.5 + 4 / 32)
    assert roofline.layer_weight_bytes("int8", 64, 128) == 4 * 64 * 64 + 2 * 64 * 128


def _result(seed: float, int8_b8: float) -> dict:
    rates = {"8": seed, "32": seed * 1.2, "128": seed}
    return {
        "throughput": {"pytorch": rates, "onnx-fp32": {"8": seed * 2}, "onnx-int8": {"1": 1.0, "8": int8_b8}},
        "latency_ms": {"pytorch": {"p50_ms": 40.0}, "onnx-int8": {"p50_ms": 5.0}},
        "fidelity_vs_pytorch": {"onnx-fp32": {"titles": {"min_cosine": 0.99998}}},
        "artifact_mb": {"onnx-int8": 287.0}, "peak_rss_mb": {"onnx-int8": 500.0, "pytorch": 2000.0},
        "cold_start_s": {"onnx-int8": 0.8}, "int8_batch_invariance_min_cosine": 0.99999,
    }


def test_targets_are_ratios_of_the_same_run() -> None:
    met = {t["target"]: t for t in speed_report.targets(_result(seed=10.0, int8_b8=35.0))}
    assert met["int8 throughput at batch 8 vs seed recipe"]["measured"] == pytest.approx(3.5)
    assert met["best int8 throughput vs PyTorch's best batch"]["measured"] == pytest.approx(35 / 12)
    assert met["best int8 throughput vs PyTorch's best batch"]["met"] is False
    assert met["int8 p50 latency vs PyTorch's"]["met"] is True  # 5/40 is exactly the 1/8 allowed
    assert met["int8 peak RSS vs PyTorch's"]["measured"] == pytest.approx(0.25)
    assert met["fp32 min cosine vs PyTorch (titles)"]["met"] is False


def test_readme_section_is_replaced(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold table\n{report.END}\noutro\n", encoding="utf-8")
    assert report.update_readme(readme, "new table\n")
    assert readme.read_text(encoding="utf-8") == f"intro\n{report.START}\nnew table\n{report.END}\noutro\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n", encoding="utf-8")
    assert not report.update_readme(plain, "x") and plain.read_text(encoding="utf-8") == "no markers\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_pooled_model_drops_the_modules_after_pooling(tmp_path: Path) -> None:
    model = tmp_path / "model"
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Asym", "type": "sentence_transformers.models.Asym"}]
    _write(model / "modules.json", json.dumps(modules))
    for name in ("config.json", "tokenizer.json", "1_Pooling/config.json", "2_Asym/config.json", ".stamp.json"):
        _write(model / name, name)
    (model / "model.safetensors").write_bytes(b"weights")
    out = peers.pooled_model(model, tmp_path / "pooled")
    assert json.loads((out / "modules.json").read_text()) == modules[:2]
    assert sorted(p.name for p in out.iterdir()) == ["1_Pooling", "config.json", "model.safetensors", "modules.json",
                                                      "tokenizer.json"]
    assert os.path.samefile(out / "model.safetensors", model / "model.safetensors")  # linked, not copied
    (out / "config.json").write_text("rewritten by a peer's exporter")
    assert (model / "config.json").read_text() == "config.json"  # small files are copies
    assert json.loads((model / "modules.json").read_text()) == modules


def test_pooled_model_needs_a_pooling_module(tmp_path: Path) -> None:
    _write(tmp_path / "model" / "modules.json",
           json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]))
    with pytest.raises(peers.PeerError, match="no Pooling module"):
        peers.pooled_model(tmp_path / "model", tmp_path / "pooled")


def test_fastembed_folder_truncates_where_sentence_transformers_does(tmp_path: Path) -> None:
    model, artifact = tmp_path / "model", tmp_path / "artifact"
    for name in ("config.json", "tokenizer.json", "special_tokens_map.json"):
        _write(model / name, "{}")
    _write(model / "tokenizer_config.json", json.dumps({"model_max_length": 512, "pad_token": "<pad>"}))
    _write(model / "sentence_bert_config.json", json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    _write(artifact / "encoder.onnx", "graph")
    _write(artifact / "encoder.onnx.data", "weights")
    out = peers.fastembed_folder(model, artifact, tmp_path / "fastembed")
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"model_max_length": 64, "pad_token": "<pad>"}
    assert (out / peers.FASTEMBED_FP32_FILE).read_text() == "graph"
    assert (out / "encoder.onnx.data").read_text() == "weights"  # the name the graph refers to
    assert json.loads((model / "tokenizer_config.json").read_text())["model_max_length"] == 512


def test_peers_choice() -> None:
    assert peers.selected("none") == () and peers.selected("all") == peers.PEERS
    assert peers.selected("fastembed") == ("fastembed",)
    assert peers.st_int8_file("avx512_vnni") == "onnx/model_qint8_avx512_vnni.onnx"
    assert peers.st_int8_file("avx2") == "onnx/model_quint8_avx2.onnx"


def test_peer_targets_compare_with_the_best_peer_of_the_run() -> None:
    result = _result(seed=10.0, int8_b8=35.0)
    assert not [t for t in speed_report.targets(result) if "peer" in t["target"]]  # a run without peers
    result["throughput"] |= {"onnx-int8": {"8": 35.0, "32": 130.0}, "st-onnx-int8": {"8": 30.0, "32": 100.0},
                             "fastembed-int8": {"8": 28.0, "32": 90.0}, "st-onnx-fp32": {"32": 50.0}}
    result["latency_ms"] |= {"onnx-int8": {"p50_ms": 5.0, "p99_ms": 8.0}, "onnx-fp32": {"p50_ms": 11.0},
                             "st-onnx-int8": {"p50_ms": 8.0},
                             "fastembed-int8": {"p50_ms": 6.0}, "st-onnx-fp32": {"p50_ms": 10.0}}
    met = {t["target"]: t for t in speed_report.targets(result)}
    fastest = met["int8 throughput at batch 32 vs the best peer's int8 (st-onnx-int8)"]
    assert fastest["measured"] == pytest.approx(1.3) and fastest["met"] is True
    quickest = met["int8 p50 latency vs the best peer's int8 (fastembed-int8)"]
    assert quickest["measured"] == pytest.approx(5 / 6) and quickest["met"] is False
    assert met["fp32 p50 latency vs the best peer's fp32 (st-onnx-fp32)"]["met"] is False
    tail = met["int8 p99 latency vs its p50"]
    assert tail["measured"] == pytest.approx(1.6) and tail["met"] is False


def test_table_forms_round_trip_within_half_a_step_and_count_their_bytes() -> None:
    from bench.table_forms import TableForm

    table = np.random.default_rng(1).standard_normal((40, 64)).astype(np.float32)
    table[:, 3] *= 20  # an outlier column, as vocabulary tables have
    rotation = np.linalg.qr(np.random.default_rng(2).standard_normal((64, 64)))[0].astype(np.float32)
    for zero_point in (True, False):
        form = TableForm("t", 4, 16, zero_point)
        blocks = table.reshape(40, 4, 16)
        span = (np.ptp(blocks, -1) / 15) if zero_point else (np.abs(blocks).max(-1) / 7)
        error = np.abs(form.dequantized(table, rotation) - table).reshape(40, 4, 16).max(-1)
        assert (error <= span / 2 + 1e-5).all() and error.max() > 0
    rotated = TableForm("t", 8, 16, True, rotated=True).dequantized(table, rotation)
    assert np.abs(rotated - table).max() < 0.05 * np.abs(table).max()
    # 250,002 x 768 at 4 bits: 96.0 MB, fp16 scales per 32 weights 12.0 MB, 4-bit zero points 3.0 MB
    assert TableForm("t", 4, 32, True).table_mb(250_002, 768) == pytest.approx(111.0, abs=0.01)
    assert TableForm("t", 4, 32, False, rotated=True).table_mb(250_002, 768) == pytest.approx(108.0 + 768 * 768 * 4 / 1e6, abs=0.01)
