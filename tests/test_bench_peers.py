"""bench/peers.py's OpenVINO peer: its variants, its folder (tokenizer, calibration texts), its sizes
and its lines in the speed report, without the openvino venv; and, where `.venv-peer-openvino`
exists (`make peer-venvs`), the real IR conversion, NNCF quantization and worker on the toy artifact."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from bench import peers, speed_report
from bench.artifacts import graph_mb
from bench.worker import KINDS, Worker, openvino_feeds
from tests import toy_artifact


@pytest.fixture
def fake_venvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every peer's venv as an empty python file, so `variants` finds them."""
    venvs = {peer: tmp_path / f"venv-{peer}" for peer in peers.PEERS}
    for venv in venvs.values():
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").touch()
    monkeypatch.setattr(peers, "VENVS", venvs)
    return venvs


def test_openvino_is_a_peer_of_all() -> None:
    assert "openvino" in peers.PEERS and peers.selected("all") == peers.PEERS
    assert peers.selected("openvino") == ("openvino",)
    assert set(peers.VENVS) == set(peers.PACKAGES) == set(peers.PEERS)
    assert peers.VENVS["openvino"].name == ".venv-peer-openvino"
    assert {"openvino", "nncf", "tokenizers"} <= set(peers.PACKAGES["openvino"])
    assert set(speed_report.PEER_NOTES) == set(peers.PEERS) and "openvino" in KINDS


def test_openvino_variants(fake_venvs: dict[str, Path], tmp_path: Path) -> None:
    folders = {"st": tmp_path / "st", "fastembed": tmp_path / "fe", "openvino": tmp_path / "ov"}
    python = fake_venvs["openvino"] / "bin" / "python"
    assert peers.variants(("openvino",), folders) == {
        "openvino-fp32": ("openvino", tmp_path / "ov", python, "fp32/model.xml"),
        "openvino-int8": ("openvino", tmp_path / "ov", python, "int8/model.xml"),
    }
    assert list(peers.variants(peers.PEERS, folders)) == [
        "st-onnx-fp32", "st-onnx-int8", "fastembed-fp32", "fastembed-int8", "openvino-fp32", "openvino-int8"]


def test_openvino_venv_missing_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "VENVS", {**peers.VENVS, "openvino": tmp_path / "nothing"})
    with pytest.raises(peers.PeerError, match="make peer-venvs"):
        peers.variants(("openvino",), {"openvino": tmp_path})


def test_openvino_needs_the_fp32_artifact(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    with pytest.raises(peers.PeerError, match="openvino needs this project's fp32 artifact"):
        peers.prepare(("openvino",), "toy", model, None, tmp_path / "cache")


def test_calibration_texts_span_the_builtin_list() -> None:
    from jobbert_onnx.export.calibration import builtin_texts

    everything = builtin_texts()
    texts = peers.calibration_texts()
    assert len(texts) == peers.OPENVINO_SUBSET_SIZE == 300 < len(everything)
    assert texts[0] == everything[0] and len(set(texts)) == 300 and set(texts) <= set(everything)
    assert any("，" in t for t in texts) and any(t.count(", ") > 5 for t in texts)  # zh, and skill lists
    assert peers.calibration_texts(len(everything) + 1) == everything


def test_openvino_folder_tokenizes_like_the_runtime(artifact: Path, tmp_path: Path, embedder) -> None:
    texts = ["  Hello WORLD ", "nurse", "data engineer python java care red senior junior hello world"]
    before = (artifact / "tokenizer.json").read_bytes()
    out = peers.openvino_folder(artifact, tmp_path / "ov", texts)
    assert (artifact / "tokenizer.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "tokenization.json", "tokenizer.json"]
    assert json.loads((out / "calibration.json").read_text(encoding="utf-8")) == texts
    settings = json.loads((out / "tokenization.json").read_text(encoding="utf-8"))
    assert settings["strip"] is True and settings["encoder_inputs"] == ["input_ids", "attention_mask"]
    feeds = openvino_feeds(Tokenizer.from_file(str(out / "tokenizer.json")), settings["strip"], texts,
                           {"input_ids", "attention_mask"})
    assert set(feeds) == {"input_ids", "attention_mask"}  # no token_type_ids: the encoder takes none
    expected = [toy_artifact.reference_ids(t) for t in texts]  # lower-cased and cut at max_seq_length
    width = max(map(len, expected))
    assert feeds["input_ids"].tolist() == [ids + [toy_artifact.VOCAB["[PAD]"]] * (width - len(ids)) for ids in expected]
    assert feeds["attention_mask"].sum(axis=1).tolist() == [len(ids) for ids in expected]
    assert embedder.tokenize(texts) == expected  # the runtime, on the same artifact


def test_graph_mb_counts_weights_beside_the_graph(tmp_path: Path) -> None:
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.xml").write_bytes(b"x" * 200_000)
    (tmp_path / "fp32" / "model.bin").write_bytes(b"x" * 1_000_000)
    (tmp_path / "encoder.onnx").write_bytes(b"x" * 100_000)
    (tmp_path / "encoder.onnx.data").write_bytes(b"x" * 2_000_000)
    assert graph_mb(tmp_path, "fp32/model.xml") == 1.2
    assert graph_mb(tmp_path, "encoder.onnx") == 2.1


def test_report_says_which_precision_openvino_ran() -> None:
    result = {
        "peers": {"openvino": {"versions": {"openvino": "2026.4.1", "nncf": "3.4.0", "tokenizers": "0.23.3"}}},
        "throughput": {"onnx-int8": {}, "openvino-fp32": {}, "openvino-int8": {}},
        "variant_info": {"openvino-fp32": {"inference_precision": "bf16"},
                         "openvino-int8": {"inference_precision": "bf16"}},
        "peers_real_weights": {"model": "mpnet", "titles": 3, "batch": 32, "invariance_probes": 2, "systems": {
            "pytorch": {"batch_invariance_min_cosine": 1.0},
            "openvino-fp32": {"min_cosine": 0.999, "mean_cosine": 0.9995, "batch_invariance_min_cosine": 1.0,
                              "info": {"inference_precision": "f32"}}}},
    }
    note = "\n".join(speed_report.peers_note(result))
    assert "OpenVINO 2026.4.1 (nncf 3.4.0" in note and "openvino-fp32 bf16, openvino-int8 bf16" in note
    table = speed_report.peers_markdown(result)
    assert "| OpenVINO fp32 (our encoder.onnx as IR), f32 inference | 0.99900 | 0.99950 | 1.00000 |" in table


# -- the real thing, where the openvino venv exists ----------------------------------------------
OPENVINO_PYTHON = peers.VENVS["openvino"] / "bin" / "python"


@pytest.mark.skipif(not OPENVINO_PYTHON.exists(),
                    reason=f"{OPENVINO_PYTHON} is missing: build it with `make .venv-peer-openvino/.installed`")
def test_openvino_build_and_worker_on_the_toy_artifact(artifact: Path, tmp_path: Path) -> None:
    titles = ["Hello world", "  data engineer nurse ", "python java care red senior junior hello world data engineer",
              "unknown words"]
    folder = peers.openvino_folder(artifact, tmp_path / "ov", titles * 5)
    subprocess.run([str(OPENVINO_PYTHON), "-m", "bench.peers", "openvino-build", str(folder),
                    "--onnx", str(artifact / "encoder.onnx")], cwd=peers.ROOT, check=True)
    for file in (peers.OPENVINO_FP32_FILE, peers.OPENVINO_INT8_FILE):
        assert (folder / file).is_file() and (folder / file).with_suffix(".bin").is_file()
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps({"titles": titles, "skills": titles[:2]}), encoding="utf-8")
    expected = []
    for title in titles:  # the toy encoder's token embeddings, mean-pooled, in numpy
        ids = np.array(toy_artifact.reference_ids(title))
        tokens = toy_artifact.EMBEDDINGS[ids].astype(np.float64)
        expected.append((tokens + toy_artifact.POSITION_EMBEDDINGS[: len(ids)] + tokens.mean(axis=0)).mean(axis=0))
    for file, tolerance in ((peers.OPENVINO_FP32_FILE, 1e-5), (peers.OPENVINO_INT8_FILE, 0.1)):
        worker = Worker("openvino", folder, workload, python=OPENVINO_PYTHON, file=file)
        assert worker.info["inference_precision"] in ("f32", "bf16", "f16")
        worker.ask(op="embed", texts=titles, batch=3, head=None, save=str(tmp_path / "embed.npy"))
        assert worker.ask(op="throughput", texts="skills", batch=8, head="positive", save=None)["per_second"] > 0
        assert worker.ask(op="latency", count=2, head="anchor")["p50_ms"] > 0
        worker.ask(op="invariance", probes=titles[:2], context=titles[2:], head=None, save=str(tmp_path / "inv.npy"))
        assert worker.close() > 0
        embeddings = np.load(tmp_path / "embed.npy")
        atol = tolerance if worker.info["inference_precision"] == "f32" else 0.1  # bf16 keeps ~3 digits
        np.testing.assert_allclose(embeddings, np.array(expected), atol=atol)
        alone, batched = np.load(tmp_path / "inv.npy")
        np.testing.assert_allclose(alone, batched, atol=atol)
