"""The int8 recipe (export/int8.py): exact smoothing, per-token matmuls, int8 embedding rows,
batch invariance, calibration input, and real-weight fidelity."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from jobbert_onnx.export import CheckpointError, ExportConfig, export_model
from jobbert_onnx.export import int8
from jobbert_onnx.runtime import Embedder
from jobbert_onnx.runtime.manifest import Manifest

from .reference import cosine_rows, st_embeddings

pytestmark = pytest.mark.full  # the exporter's int8 recipe

RNG = np.random.default_rng(7)
K, N = 48, 40


def _linear_model(opset: int, weight: np.ndarray | None = None) -> onnx.ModelProto:
    """x [batch, seq, K] -> MatMul(W) -> Add(b) -> y, and ids -> Gather(table) -> e."""
    weight = RNG.normal(size=(K, N)).astype(np.float32) if weight is None else weight
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


@pytest.mark.parametrize("asymmetric", [(), {"x"}])
@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax takes its axes as an input from opset 18
def test_per_token_matmul_is_close_and_row_independent(opset, asymmetric):
    model = _linear_model(opset)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    int8.per_token_matmuls(quantized, ["xw"], weight_bits=7, asymmetric=asymmetric)
    onnx.checker.check_model(quantized)
    assert {n.op_type for n in quantized.graph.node} >= {"MatMulIntegerToFloat", "QuantizeLinear"}
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


def test_8_bit_weights_keep_every_row_pair_within_the_avx2_budget():
    """uint8 x int8 is exact on AVX2 without VNNI only while 255 * (|w[2j]| + |w[2j+1]|) fits an
    int16; 8-bit weights are trimmed to that budget, and trimming costs little accuracy."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(769, 64)).astype(np.float32)  # odd K: the last row has no pair
    weight[10, 5], weight[11, 5] = 9.0, -8.5  # a pair that 8 bits would put far past the budget
    quantized, scale = int8.quantize_weight(weight, 8)
    pairs = np.abs(quantized[0:768:2].astype(np.int32)) + np.abs(quantized[1:768:2].astype(np.int32))
    assert pairs.max() <= int8.PAIR_BUDGET and 255 * pairs.max() <= 32767
    assert np.abs(quantized).max() > 63  # more than 7 bits' range is used
    error8 = np.abs(quantized * scale - weight).mean(axis=0)
    seven, scale7 = int8.quantize_weight(weight, 7)
    error7 = np.abs(seven * scale7 - weight).mean(axis=0)
    assert np.abs(seven).max() <= 63 and error8.mean() < 0.8 * error7.mean()
    squared8 = np.square(quantized * scale - weight).sum(axis=0)
    squared7 = np.square(seven * scale7 - weight).sum(axis=0)
    assert (squared8 <= squared7 * (1 + 1e-5)).all()  # no column is worse than at 7 bits
    with pytest.raises(ValueError, match="weight_bits 6"):
        int8.quantize_weight(weight, 6)


def _matmul_integer_to_float(weight: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """onnxruntime's MatMulIntegerToFloat of uint8 `rows` (zero point 128) by int8 `weight`, all scales 1."""
    k, n = weight.shape
    node = helper.make_node("MatMulIntegerToFloat", ["a", "W", "s", "ws", "zp"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node], "mitf",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", k]), helper.make_tensor_value_info("s", TensorProto.FLOAT, ["m", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.ones(n, np.float32), "ws"),
         numpy_helper.from_array(np.array(128, np.uint8), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"a": rows, "s": np.ones((len(rows), 1), np.float32)})[0]


def test_matmul_integer_to_float_sums_trimmed_weights_exactly():
    """The kernel the int8 graph runs gives exact sums with the exporter's weights, for the rows
    that saturate AVX2's pairwise int16 adds most (all 255, or 255 where the weight is positive).
    On a CPU without VNNI (this project's AMD EPYC machines) plain 8-bit weights fail it."""
    rng = np.random.default_rng(0)
    weight, _ = int8.quantize_weight(rng.standard_t(3, size=(64, 32)).astype(np.float32), 8)
    for rows in (np.full((7, 64), 255, np.uint8), np.where(weight[:, :7].T > 0, 255, 0).astype(np.uint8),
                 rng.integers(0, 256, size=(7, 64)).astype(np.uint8)):
        exact = (rows.astype(np.int64) - 128) @ weight.astype(np.int64)
        np.testing.assert_array_equal(_matmul_integer_to_float(weight, rows), exact)


def test_int8_artifacts_respect_the_avx2_pair_budget(exported):
    """Every int8 weight the exporter writes stays within the pair budget."""
    from onnx import external_data_helper

    model = onnx.load(str(exported("minilm_model", "int8") / "encoder.onnx"), load_external_data=False)
    external_data_helper.load_external_data_for_model(model, str(exported("minilm_model", "int8")))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "MatMulIntegerToFloat":
            w = weights[node.input[1]].astype(np.int32)
            rows = len(w) - len(w) % 2
            assert (np.abs(w[0:rows:2]) + np.abs(w[1:rows:2])).max() <= int8.PAIR_BUDGET, node.name
            checked += 1
    assert checked >= 24  # MiniLM: 6 layers x 4 int8 matmuls (Q, K and V are one), less any fp32 fallbacks


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


@pytest.mark.parametrize("fixture", ["minilm_model", "mpnet_model"])
def test_int8_fidelity_on_full_length_texts(request, exported, fixture, job_titles):
    """Texts cut at the model's window (256 tokens for MiniLM, 384 for MPNet), repetitive ones
    included, hold the int8 threshold; export validation runs these probes, so it sees them too."""
    from jobbert_onnx.export.probes import FULL_LENGTH, probe_texts

    artifact = exported(fixture, "int8")
    manifest = Manifest.load(artifact)
    assert manifest.validation["probe_count"] >= len(probe_texts())
    long_mix = [" ".join(job_titles[i:i + 150]) for i in range(0, 600, 150)]  # real titles, not calibrated on
    texts = [*FULL_LENGTH, *long_mix]
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    tokenizer.no_truncation()
    assert min(len(tokenizer.encode(text).ids) for text in texts) > 512  # every text is cut at the window
    cosine = cosine_rows(st_embeddings(request.getfixturevalue(fixture), texts), Embedder(artifact).encode(texts))
    print(f"{fixture} int8 on {len(texts)} full-length texts: min {cosine.min():.5f} mean {cosine.mean():.5f}")
    assert cosine.min() >= 0.99


def test_int8_artifact_is_small(exported):
    fp32 = sum(f.stat().st_size for f in exported("minilm_model", "fp32").rglob("*.onnx*"))
    small = sum(f.stat().st_size for f in exported("minilm_model", "int8").rglob("*.onnx*"))
    # int8 matmuls and embedding rows: about a quarter, plus the few matmuls a fallback plan keeps fp32
    assert small < 0.35 * fp32


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


def _skewed_inputs(batch: int = 3, seq: int = 5) -> np.ndarray:
    """GELU-like rows: almost all values >= -0.17, a long positive tail."""
    x = np.random.default_rng(11).normal(size=(batch, seq, K)).astype(np.float32) * 2
    return (x * 0.5 * (1 + np.tanh(0.8 * x))).astype(np.float32)


def test_one_sided_inputs_are_found_from_calibration_extremes():
    extremes = {"gelu": (-0.17, 9.0), "layernorm": (-6.0, 7.5), "relu": (0.0, 3.0), "dead": (0.0, 0.0)}
    assert int8.one_sided(extremes, ["gelu", "layernorm", "relu", "dead", "unseen"]) == {"gelu", "relu"}


def test_asymmetric_rows_beat_symmetric_on_skewed_inputs():
    # Integer weights with 63 in every column quantize exactly at 7 bits: the error left is the activations'.
    weight = np.random.default_rng(5).integers(-60, 60, size=(K, N)).astype(np.float32)
    weight[0] = 63
    model = _linear_model(17, weight)
    x, ids = _skewed_inputs(8, 16), RNG.integers(0, 2000, size=(8, 16))
    expected = _run(model, x, ids)[0]
    errors = {}
    for asymmetric in (False, True):
        quantized = onnx.ModelProto()
        quantized.CopyFrom(model)
        int8.per_token_matmuls(quantized, ["xw"], weight_bits=7, asymmetric={"x"} if asymmetric else ())
        onnx.checker.check_model(quantized)
        errors[asymmetric] = np.abs(_run(quantized, x, ids)[0] - expected).mean()
    assert errors[True] < 0.65 * errors[False]  # about one more bit: half the error


def test_asymmetric_zero_point_is_exact_for_zero_and_constant_rows():
    """A row of zeros stays exactly zero; a constant row's product is that constant times the
    weight column sums (the zero-point correction must cancel exactly)."""
    model = _linear_model(17)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    int8.per_token_matmuls(quantized, ["xw"], weight_bits=7, asymmetric={"x"})
    x, ids = _skewed_inputs(1, 3), RNG.integers(0, 2000, size=(1, 3))
    x[0, 0] = 0
    x[0, 1] = -0.5
    bias = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b"))
    got, expected = _run(quantized, x, ids)[0], _run(model, x, ids)[0]
    np.testing.assert_allclose(got[0, 0], bias, rtol=0, atol=1e-6)
    assert cosine_rows(got[0, 1:2] - bias, expected[0, 1:2] - bias).min() > 0.999


@pytest.mark.parametrize("opset,asymmetric", [(11, False), (17, True), (18, False)])
def test_matmuls_sharing_an_input_become_one_that_gives_the_same_numbers(opset, asymmetric):
    """Q, K and V read one tensor: they become one MatMulIntegerToFloat and a Split, and each
    output is bit for bit what that matmul quantized alone gives (every column is computed alone)."""
    widths = (N, N, 24)
    weights = [RNG.normal(size=(K, width)).astype(np.float32) for width in widths]
    names = ["q", "k", "v"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", f"W{n}"], [n], name=f"/attention/{n}/MatMul") for n in names],
        "siblings", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", w]) for n, w in zip(names, widths)],
        [numpy_helper.from_array(w, f"W{n}") for n, w in zip(names, weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = _skewed_inputs(3, 5) if asymmetric else _inputs()[0]
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    int8.per_token_matmuls(merged, names, weight_bits=8, asymmetric={"x"} if asymmetric else ())
    onnx.checker.check_model(merged)
    assert [n.op_type for n in merged.graph.node].count("MatMulIntegerToFloat") == 1
    assert [n.op_type for n in merged.graph.node].count("Split") == 1
    got = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, {"x": x})
    for name, value in zip(names, got):
        alone = onnx.ModelProto()
        alone.CopyFrom(model)
        int8.per_token_matmuls(alone, [name], weight_bits=8, asymmetric={"x"} if asymmetric else ())
        session = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(value, session.run([name], {"x": x})[0])


def _pool_by_mean(hidden: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["token_embeddings"], ["sentence_embedding"], axes=[1], keepdims=0)],
        "pool",
        [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "seq", hidden]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sensitivity_ranks_the_matmul_whose_int8_hurts_most_first():
    """Two chained MatMuls; the second reads a row with one huge outlier channel, which per-token
    int8 cannot represent, so keeping it fp32 helps most and it must rank first."""
    from jobbert_onnx.export.precision import Int8Options
    from jobbert_onnx.export.sensitivity import rank_matmuls

    hidden = 16
    first = RNG.normal(size=(hidden, hidden)).astype(np.float32)
    second = RNG.normal(size=(hidden, hidden)).astype(np.float32)
    spike = np.zeros(hidden, np.float32)
    spike[0] = 500.0  # added to the first matmul's output: a massive activation, as special tokens have
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["x"], axis=0),
         helper.make_node("MatMul", ["x", "W1"], ["h"], name="first/MatMul"),
         helper.make_node("Add", ["h", "spike"], ["hs"]),
         helper.make_node("MatMul", ["hs", "W2"], ["token_embeddings"], name="second/MatMul")],
        "chain",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [numpy_helper.from_array(RNG.normal(size=(50, hidden)).astype(np.float32), "table"),
         numpy_helper.from_array(first, "W1"), numpy_helper.from_array(second, "W2"),
         numpy_helper.from_array(spike, "spike")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ids = RNG.integers(0, 50, size=(4, 6))
    feeds = [{"input_ids": ids, "attention_mask": np.ones_like(ids)}]
    ranking = rank_matmuls(Int8Options(alpha=None), model, feeds, feeds, _pool_by_mean(hidden))
    assert ranking.ranked == ["token_embeddings", "h"]
    assert ranking.loss_without["token_embeddings"] < 0.1 * ranking.loss_all_int8


def test_plans_rank_only_when_a_fallback_is_needed():
    from jobbert_onnx.export.int8_plans import FALLBACK_COUNTS, int8_plans
    from jobbert_onnx.export.precision import Int8Options

    calls = []

    def rank():
        calls.append(1)
        return [f"m{i}" for i in range(5)]

    plans = int8_plans(Int8Options(), rank)
    assert next(plans).fp32_matmuls == () and calls == []
    rest = list(plans)
    assert calls == [1]
    assert [len(p.fp32_matmuls) for p in rest] == [c for c in FALLBACK_COUNTS if c < 5] + [5]
    assert rest[0].fp32_matmuls == ("m0", "m1")


def test_margin_tries_every_plan_and_keeps_the_last_that_passes(jobbert_asym_model, tmp_path):
    """A margin no plan can meet: every plan is tried, the export still succeeds because the kept
    plan passes the threshold, and the manifest says the margin was missed."""
    out = export_model(ExportConfig(model=str(jobbert_asym_model), output=tmp_path / "out", precision="int8",
                                    margin=0.02, show_progress=False))
    plan = Manifest.load(out).encoder.transform["plan"]
    counts = [a["fp32_matmuls"] for a in plan["attempts"]]
    assert counts[0] == 0 and counts == sorted(counts) and len(counts) >= 3
    assert plan["met_margin"] is False and plan["chosen"] == len(counts) - 1
    transform = Manifest.load(out).encoder.transform
    # The tiny model has 2 layers x 6 matmuls; the last plan may keep every one of them fp32.
    assert len(transform["fp32_matmuls"]) == counts[-1] and transform["int8_matmuls"] + counts[-1] == 12


@pytest.mark.parametrize("fixture", ["mpnet_model", "mpnet_asym_model"])
def test_base_size_real_weights_pass_default_int8_validation(exported, job_titles, fixture, request):
    """all-mpnet-base-v2 (real weights, base size), with and without a JobBERT-v2 Asym head,
    exports at int8 with the default threshold, and holds on job titles it never saw."""
    artifact = exported(fixture, "int8")
    manifest = Manifest.load(artifact)
    assert manifest.validation["performed"] and manifest.validation["min_cosine_threshold"] == 0.99
    assert all(h["min_cosine"] >= 0.99 for h in manifest.validation["heads"].values())
    embedder = Embedder(artifact)
    titles = job_titles[5::40]
    for head in embedder.heads:
        cosine = cosine_rows(st_embeddings(request.getfixturevalue(fixture), titles, head), embedder.encode(titles, head=head))
        print(f"{fixture} int8 {head} on {len(titles)} titles: min {cosine.min():.5f} mean {cosine.mean():.5f}")
        assert cosine.min() >= 0.99
    alone = np.concatenate([embedder.encode([t], batch_size=1) for t in titles[:20]])
    longer = sorted(job_titles, key=len)[-31:]
    batched = np.concatenate([embedder.encode([*longer, t], batch_size=32)[-1:] for t in titles[:20]])
    assert cosine_rows(alone, batched).min() >= 0.9999
