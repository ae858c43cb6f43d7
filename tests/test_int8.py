"""The int8 recipe (export/int8.py): exact smoothing, per-token matmuls, int8 embedding rows,
batch invariance, calibration input, and real-weight fidelity."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from jobbert_onnx.export import CheckpointError, ExportConfig, export_model
from jobbert_onnx.export import int8
from jobbert_onnx.runtime import Embedder
from jobbert_onnx.runtime.manifest import Manifest

from .reference import cosine_rows, st_embeddings

RNG = np.random.default_rng(7)
K, N = 48, 40


def _linear_model(opset: int) -> onnx.ModelProto:
    """x [batch, seq, K] -> MatMul(W) -> Add(b) -> y, and ids -> Gather(table) -> e."""
    weight = RNG.normal(size=(K, N)).astype(np.float32)
    table = RNG.normal(size=(2000, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="/layer.0/dense/MatMul"),
         helper.make_node("Add", ["xw", "b"], ["y"]),
         helper.make_node("Gather", ["table", "ids"], ["e"], axis=0)],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", "seq", 8])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(RNG.normal(size=N).astype(np.float32), "b"),
         numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = np.ones(ids.shape, np.int64)
    return tuple(session.run(["y", "e"], {"x": x, "ids": ids, "attention_mask": mask}))


def _inputs(batch: int = 3, seq: int = 5) -> tuple[np.ndarray, np.ndarray]:
    x = RNG.normal(size=(batch, seq, K)).astype(np.float32)
    x[..., 3] *= 40  # an outlier channel, as real activations have
    return x, RNG.integers(0, 2000, size=(batch, seq))


def test_smoothing_is_exact_in_fp32():
    model = _linear_model(17)
    x, ids = _inputs()
    matmuls = int8.quantizable_matmuls(model)
    assert matmuls == ["xw"]
    maxima = int8.channel_maxima(model, int8.matmul_inputs(model, matmuls), [{"x": x, "ids": ids,
                                                                            "attention_mask": np.ones(ids.shape, np.int64)}])
    assert maxima["x"].shape == (K,) and maxima["x"][3] > 10 * np.median(maxima["x"])
    assert [o.name for o in model.graph.output] == ["y", "e"]  # calibration worked on a copy
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    int8.smooth(smoothed, maxima, 0.5, matmuls)
    onnx.checker.check_model(smoothed)
    np.testing.assert_allclose(_run(smoothed, x, ids)[0], _run(model, x, ids)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax takes its axes as an input from opset 18
def test_per_token_matmul_is_close_and_row_independent(opset):
    model = _linear_model(opset)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    int8.per_token_matmuls(quantized, ["xw"], weight_bits=7)
    onnx.checker.check_model(quantized)
    assert {n.op_type for n in quantized.graph.node} >= {"MatMulInteger", "QuantizeLinear"}
    assert "MatMul" not in {n.op_type for n in quantized.graph.node}
    x, ids = _inputs()
    expected, got = _run(model, x, ids)[0], _run(quantized, x, ids)[0]
    assert cosine_rows(expected.reshape(-1, N), got.reshape(-1, N)).min() > 0.999
    # A row's result must not depend on any other row: scale another row up 1000x and zero a third.
    changed = x.copy()
    changed[1] *= 1000
    changed[2] = 0
    again = _run(quantized, changed, ids)[0]
    np.testing.assert_array_equal(again[0], got[0])
    assert np.isfinite(again).all()


def test_embedding_rows_are_int8_and_small_tables_stay():
    reference = _linear_model(17)
    model = onnx.ModelProto()
    model.CopyFrom(reference)
    assert int8.int8_embedding_tables(model, min_rows=5000) == 0
    assert int8.int8_embedding_tables(model, min_rows=1024) == 1
    onnx.checker.check_model(model)
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "table" not in stored and stored["table_int8"].dtype == np.int8
    x, ids = _inputs()
    expected, got = _run(reference, x, ids)[1], _run(model, x, ids)[1]
    assert cosine_rows(expected.reshape(-1, 8), got.reshape(-1, 8)).min() > 0.9999


@pytest.mark.parametrize("fixture", ["jobbert_asym_model", "minilm_model"])
def test_int8_is_batch_invariant(exported, job_titles, fixture):
    """A title embedded alone and inside a padded batch of longer titles gives the same embedding."""
    embedder = Embedder(exported(fixture, "int8"))
    titles = job_titles[::97][:40]
    longer = sorted(job_titles, key=len)[-31:]
    alone = np.concatenate([embedder.encode([t], batch_size=1) for t in titles])
    batched = np.concatenate([embedder.encode([*longer, t], batch_size=32)[-1:] for t in titles])
    assert cosine_rows(alone, batched).min() >= 0.9999


def test_int8_fidelity_on_real_weights(exported, minilm_model, job_titles):
    """all-MiniLM-L6-v2 at int8 against sentence-transformers on 600 real job titles (none calibrated on)."""
    titles = job_titles[1::17]
    cosine = cosine_rows(st_embeddings(minilm_model, titles), Embedder(exported("minilm_model", "int8")).encode(titles))
    print(f"minilm int8 on {len(titles)} titles: min {cosine.min():.5f} mean {cosine.mean():.5f}")
    assert cosine.min() >= 0.99


def test_int8_artifact_is_small(exported):
    fp32 = sum(f.stat().st_size for f in exported("minilm_model", "fp32").rglob("*.onnx*"))
    small = sum(f.stat().st_size for f in exported("minilm_model", "int8").rglob("*.onnx*"))
    assert small < 0.3 * fp32  # int8 matmuls and embedding rows: about a quarter


def test_calibration_file_is_used_and_recorded(jobbert_asym_model, tmp_path):
    texts = tmp_path / "titles.txt"
    texts.write_text("Krankenpfleger\n\nData Engineer\n数据工程师\n", encoding="utf-8")
    out = export_model(ExportConfig(model=str(jobbert_asym_model), output=tmp_path / "out", precision="int8",
                                    calibration=texts, show_progress=False))
    transform = Manifest.load(out).encoder.transform
    assert transform["calibration_texts"] == str(texts) and transform["calibration_batches"] == 1


def test_empty_calibration_file_is_refused(jobbert_asym_model, tmp_path):
    texts = tmp_path / "empty.txt"
    texts.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="empty.txt.*no text"):
        export_model(ExportConfig(model=str(jobbert_asym_model), output=tmp_path / "out", precision="int8",
                                  calibration=texts, show_progress=False))
    assert not (tmp_path / "out").exists()
