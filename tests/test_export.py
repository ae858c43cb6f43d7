"""The exporter end to end: parity with sentence-transformers for every fixture, precision and head,
the artifact's contents, and every way an export must refuse or fail cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from jobbert_onnx.export import CheckpointError, ExportConfig, SourceError, ValidationError, export_model
from jobbert_onnx.export.artifact import TargetError
from jobbert_onnx.runtime import Embedder
from jobbert_onnx.runtime.manifest import Manifest
from jobbert_onnx.runtime.tokenization import TextTokenizer

from .reference import cosine_rows, st_embeddings, st_model

pytestmark = pytest.mark.full  # the exporter against sentence-transformers

THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}
FIXTURES = ["jobbert_asym_model", "jobbert_router_model", "bert_model", "minilm_model"]
HARD_TEXTS = [
    "Software Engineer", "高级软件开发人员", "Produktmanager", "Científica de datos", "", "a", "  padded  ",
    "\tTab\nNewline\r\n", "👩‍💻 Developer 🚀", "Java开发工程师 Backend – München", "ÉCOLE Über İstanbul ǅ",
    "e\u0301 combining", "zero\u200bwidth", "nbsp\u00a0inside", "\u3000ideographic\u3000", "bell\x07char",
    "<s> [CLS] </s> <pad> [SEP]", "C++/C#/F# .NET", "UPPER lower MiXeD", "x" * 300,
    " ".join(["skills"] * 400),
]


def sample_titles(job_titles: list[str], n: int = 48) -> list[str]:
    rng = np.random.default_rng(0)
    return [job_titles[i] for i in rng.choice(len(job_titles), size=n, replace=False)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_parity_with_sentence_transformers(request, exported, job_titles, fixture, precision):
    model_dir = request.getfixturevalue(fixture)
    artifact = exported(fixture, precision)
    manifest = Manifest.load(artifact)
    assert manifest.validation["performed"] is True
    embedder = Embedder(artifact)
    texts = sample_titles(job_titles) + HARD_TEXTS
    for head in embedder.heads:
        recorded = manifest.validation["heads"][head]
        assert recorded["min_cosine"] >= THRESHOLDS[precision]
        reference = st_embeddings(model_dir, texts, head)
        cosine = cosine_rows(reference, embedder.encode(texts, head=head))
        print(f"{fixture} {precision} {head}: min {cosine.min():.7f} mean {cosine.mean():.7f}")
        assert cosine.min() >= THRESHOLDS[precision], (head, texts[int(cosine.argmin())])


@pytest.mark.parametrize("fixture", FIXTURES)
def test_token_ids_match_sentence_transformers(request, exported, fixture):
    model_dir = request.getfixturevalue(fixture)
    manifest = Manifest.load(exported(fixture, "fp32"))
    ours = TextTokenizer.from_file(exported(fixture, "fp32") / "tokenizer.json", manifest.tokenizer)(HARD_TEXTS)
    # sentence-transformers 6 no longer strips; the runtime does, as sentence-transformers <= 5 did.
    theirs = st_model(model_dir).tokenize([t.strip() for t in HARD_TEXTS])
    for name in ("input_ids", "attention_mask", *(["token_type_ids"] if "token_type_ids" in theirs else [])):
        np.testing.assert_array_equal(ours[name], theirs[name].numpy(), err_msg=name)
    assert ours["input_ids"].shape[1] == manifest.tokenizer.max_seq_length  # the long texts were truncated


def test_jobbert_heads_and_manifest(exported, jobbert_asym_model, jobbert_router_model):
    asym = Manifest.load(exported("jobbert_asym_model", "fp32"))
    router = Manifest.load(exported("jobbert_router_model", "fp32"))
    for manifest in (asym, router):
        assert list(manifest.heads) == ["anchor", "positive"]
        assert manifest.default_head == "anchor"
        assert manifest.pooling.modes == ["mean"]
        assert manifest.encoder.input_names == ["input_ids", "attention_mask"]
        assert manifest.tokenizer.max_seq_length == 64 and manifest.tokenizer.do_lower_case is False
        assert manifest.opset >= 17 and manifest.format_version == 2
        assert {"torch", "transformers", "sentence-transformers", "onnx", "onnxruntime"} <= set(manifest.versions)
        assert set(manifest.files) == {"encoder.onnx", "encoder.onnx.data", "pooling.onnx", "heads/anchor.onnx", "heads/positive.onnx",
                                       "tokenizer.json"}
    embedder = Embedder(exported("jobbert_asym_model", "fp32"))
    anchor = embedder.encode(["Data Scientist"], head="anchor")
    positive = embedder.encode(["Data Scientist"], head="positive")
    assert not np.allclose(anchor, positive), "the two routes must have their own weights"
    # The legacy Asym and the Router checkpoint hold the same weights.
    np.testing.assert_allclose(anchor, Embedder(exported("jobbert_router_model", "fp32")).encode(["Data Scientist"]),
                               atol=1e-5)


def test_bert_fixture_has_token_types_cls_dense_stack_and_normalize(exported):
    manifest = Manifest.load(exported("bert_model", "fp32"))
    assert manifest.encoder.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.pooling.modes == ["cls"]
    assert list(manifest.heads) == ["default"]
    assert manifest.heads["default"].modules[-1] == "Normalize"
    assert sum(m.startswith("Dense") for m in manifest.heads["default"].modules) == 2
    # sentence-transformers 6 bakes do_lower_case into tokenizer.json instead of its own config.
    tokenizer = TextTokenizer.from_file(exported("bert_model", "fp32") / "tokenizer.json", manifest.tokenizer)
    np.testing.assert_array_equal(tokenizer(["DATA SCIENTIST"])["input_ids"], tokenizer(["data scientist"])["input_ids"])


def test_graphs_have_dynamic_axes_and_fp32_io(exported):
    for precision in ("fp32", "fp16", "int8"):
        folder = exported("jobbert_asym_model", precision)
        for rel in ("encoder.onnx", "pooling.onnx", "heads/anchor.onnx"):
            graph = onnx.load(str(folder / rel), load_external_data=False).graph
            for value in [*graph.input, *graph.output]:
                dims = value.type.tensor_type.shape.dim
                assert dims[0].dim_param, f"{rel} {value.name}: batch axis must be dynamic"
                if value.name in ("input_ids", "attention_mask", "token_embeddings"):
                    assert dims[1].dim_param, f"{rel} {value.name}: sequence axis must be dynamic"
                if value.name in ("token_embeddings", "sentence_embedding", "embedding"):
                    assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_precision_transforms_are_recorded(exported):
    fp16 = Manifest.load(exported("jobbert_asym_model", "fp16"))
    assert "fp16" in fp16.encoder.transform["method"] and "LayerNormalization" in fp16.encoder.transform["fp32_ops"]
    assert fp16.pooling.transform["method"] == "none"
    int8 = Manifest.load(exported("jobbert_asym_model", "int8"))
    assert "per-token" in int8.encoder.transform["method"] and int8.encoder.transform["weight_bits"] == 8
    assert int8.encoder.transform["calibration_texts"] == "built-in" and int8.encoder.transform["calibration_batches"] > 0
    assert int8.encoder.transform["int8_matmuls"] == 12  # 2 layers x (Q, K, V, attention out, FFN in, FFN out)
    assert int8.encoder.transform["int8_embedding_tables"] == 1  # the vocabulary; not the 130-row positions
    assert int8.heads["anchor"].transform["method"] == "none"
    int8_ops = {n.op_type for n in onnx.load(str(exported("jobbert_asym_model", "int8") / "encoder.onnx")).graph.node}
    assert "MatMulIntegerToFloat" in int8_ops  # one node per int8 matmul and its dequantization
    assert {"MultiHeadAttention", "SkipLayerNormalization"} <= int8_ops  # fused before quantizing (export/fusion.py)
    assert int8.encoder.transform["fusion"]["fused"] is True
    # every attention reads keys padded to a multiple of 16, for ARM (export/attention_rows.py)
    assert int8.encoder.transform["padded_attention"] == {"MultiHeadAttention": 2, "Softmax": 0}
    assert "DynamicQuantizeLinear" not in int8_ops  # per-tensor activation scales would break batch invariance
    def encoder_bytes(precision: str) -> int:
        return sum(f.stat().st_size for f in exported("jobbert_asym_model", precision).glob("encoder.onnx*"))

    assert encoder_bytes("fp16") < 0.6 * encoder_bytes("fp32")


def test_encoder_weights_are_external_and_readable(exported, tmp_path):
    import os
    import stat

    folder = exported("jobbert_asym_model", "int8")
    weights = folder / "encoder.onnx.data"
    graph = onnx.load(str(folder / "encoder.onnx"), load_external_data=False).graph
    inline = [i.name for i in graph.initializer
              if i.data_location != onnx.TensorProto.EXTERNAL and len(i.SerializeToString()) > 2048]
    assert inline == [] and weights.stat().st_size > 100_000
    assert "encoder.onnx.data" in Manifest.load(folder).files  # so its sha256 is checked at load
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, weights, folder / "heads"):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_batch_invariance_fp32(exported, job_titles):
    embedder = Embedder(exported("jobbert_asym_model", "fp32"))
    title = "Nurse"
    longer = sorted(job_titles, key=len)[-7:]
    alone = embedder.encode([title])
    in_batch = embedder.encode([*longer, title], batch_size=8)[-1:]
    np.testing.assert_allclose(alone, in_batch, atol=1e-5, rtol=1e-5)


# -- refusals and failures --------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unsupported_module_is_refused_by_name(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    modules = json.loads((model / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_LSTM", "type": "sentence_transformers.models.LSTM"})
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="sentence_transformers.models.LSTM"):
        export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))
    assert not (tmp_path / "out").exists()


def test_custom_code_module_is_refused(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    modules = json.loads((model / "modules.json").read_text())
    modules[1]["type"] = "my_package.pooling.Pooling"
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="my_package.pooling.Pooling"):
        export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))


def test_non_empty_target_is_refused_then_overwritten(exported, jobbert_asym_model, tmp_path):
    # --overwrite replaces only an artifact (a plain folder is refused: tests/test_export_safety.py).
    target = _copy(exported("jobbert_asym_model", "fp32"), tmp_path / "out")
    config = ExportConfig(model=str(jobbert_asym_model), output=target, show_progress=False, validate=False)
    with pytest.raises(TargetError, match="not empty"):
        export_model(config)
    assert Manifest.load(target).validation["performed"] is True
    config.overwrite = True
    export_model(config)
    assert Manifest.load(target).validation["performed"] is False
    Embedder(target)
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging folder may be left behind"


def test_failed_validation_leaves_no_artifact(jobbert_asym_model, tmp_path):
    config = ExportConfig(model=str(jobbert_asym_model), output=tmp_path / "out", precision="int8",
                          min_cosine=1.0 + 1e-9, show_progress=False)
    with pytest.raises(ValidationError, match="min cosine.*--min-cosine; to calibrate int8 on your own texts"):
        export_model(config)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(jobbert_asym_model, tmp_path, monkeypatch):
    from jobbert_onnx.export import graphs

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(graphs, "export_head", boom)
    with pytest.raises(KeyboardInterrupt):
        export_model(ExportConfig(model=str(jobbert_asym_model), output=tmp_path / "out", validate=False,
                                  show_progress=False))
    assert list(tmp_path.iterdir()) == []


def test_pickled_weights_need_allow_pickle(jobbert_pickled_model, tmp_path):
    assert not (jobbert_pickled_model / "model.safetensors").exists()
    config = ExportConfig(model=str(jobbert_pickled_model), output=tmp_path / "out", show_progress=False)
    with pytest.raises(CheckpointError, match="allow-pickle"):
        export_model(config)
    assert not (tmp_path / "out").exists()
    config.allow_pickle = True
    export_model(config)
    assert Manifest.load(tmp_path / "out").validation["heads"]["anchor"]["min_cosine"] >= 0.99999


def test_unreachable_hub_suggests_a_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SourceError, match="local folder"):
        export_model(ExportConfig(model="TechWolf/JobBERT-v3", output=tmp_path / "out", show_progress=False))
    assert not (tmp_path / "out").exists()


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such folder"):
        export_model(ExportConfig(model=str(tmp_path / "nope"), output=tmp_path / "out", show_progress=False))


# -- every pooling mode and Dense activation --------------------------------------------------
def _set_pooling(model: Path, mode: str) -> None:
    config_path = next(model.glob("*_Pooling")) / "config.json"
    config = json.loads(config_path.read_text())
    for key in [k for k in config if k.startswith("pooling_mode")]:
        del config[key]
    config["pooling_mode"] = mode
    config_path.write_text(json.dumps(config))


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_every_pooling_mode(bert_model, tmp_path, mode):
    model = _copy(bert_model, tmp_path / "model")
    _set_pooling(model, mode)
    export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.pooling.modes == [mode]
    assert manifest.validation["heads"]["default"]["min_cosine"] >= 0.99999


@pytest.mark.parametrize("activation", ["ReLU", "GELU", "SiLU", "Sigmoid", "LeakyReLU", "ELU", "Softplus"])
def test_dense_activations(bert_model, tmp_path, activation):
    model = _copy(bert_model, tmp_path / "model")
    dense_config = sorted(model.glob("*_Dense/config.json"))[0]
    config = json.loads(dense_config.read_text())
    config["activation_function"] = f"torch.nn.modules.activation.{activation}"
    dense_config.write_text(json.dumps(config))
    export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))
    manifest = Manifest.load(tmp_path / "out")
    assert activation in manifest.heads["default"].modules[0]
    assert manifest.validation["heads"]["default"]["min_cosine"] >= 0.99999


def test_untrusted_activation_is_refused(bert_model, tmp_path):
    model = _copy(bert_model, tmp_path / "model")
    dense_config = sorted(model.glob("*_Dense/config.json"))[0]
    config = json.loads(dense_config.read_text())
    config["activation_function"] = "my_package.Swish"
    dense_config.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="my_package.Swish"):
        export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))


def test_do_lower_case_from_legacy_config(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    config = json.loads((model / "sentence_bert_config.json").read_text())
    config["do_lower_case"] = True
    (model / "sentence_bert_config.json").write_text(json.dumps(config))
    export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.tokenizer.do_lower_case is True
    texts = ["Senior DATA Scientist", "ÜBER Engineer", "Produktmanager"]
    ours = TextTokenizer.from_file(tmp_path / "out" / "tokenizer.json", manifest.tokenizer)(texts)
    np.testing.assert_array_equal(ours["input_ids"], st_model(model).tokenize(texts)["input_ids"].numpy())
    assert manifest.validation["heads"]["anchor"]["min_cosine"] >= 0.99999


def test_concurrent_encode_on_a_real_artifact(exported, job_titles):
    from concurrent.futures import ThreadPoolExecutor

    embedder = Embedder(exported("jobbert_asym_model", "int8"))
    chunks = [job_titles[i * 40:(i + 1) * 40] for i in range(8)]
    sequential = [embedder.encode(c, head="positive") for c in chunks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda c: embedder.encode(c, head="positive"), chunks))
    for a, b in zip(sequential, concurrent):
        np.testing.assert_array_equal(a, b)


def test_mpnet_encoder(bert_model, tmp_path):
    """MPNet (relative position buckets, no token_type_ids) behind the BERT fixture's tokenizer and heads."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    model = _copy(bert_model, tmp_path / "model")
    hidden = json.loads((model / "config.json").read_text())["hidden_size"]
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=2 * hidden, max_position_embeddings=130, pad_token_id=0)
    for stale in ("model.safetensors", "config.json"):
        (model / stale).unlink()
    MPNetModel(config).eval().save_pretrained(model)
    export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.encoder.input_names == ["input_ids", "attention_mask"]
    assert manifest.validation["heads"]["default"]["min_cosine"] >= 0.99999
    texts = ["Data Scientist", "  Senior Nurse ", "x " * 80]
    np.testing.assert_allclose(Embedder(tmp_path / "out").encode(texts), st_embeddings(model, texts), atol=1e-5)


def test_hub_id_is_downloaded_and_its_revision_recorded(jobbert_asym_model, tmp_path, monkeypatch):
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def fake_snapshot_download(repo_id, revision=None, **kwargs):
        calls.append((repo_id, revision))
        return str(_copy(jobbert_asym_model, tmp_path / "hub" / "snapshots" / commit))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    export_model(ExportConfig(model="TechWolf/JobBERT-v3", revision="v3.0", output=tmp_path / "out",
                              validate=False, show_progress=False))
    assert calls == [("TechWolf/JobBERT-v3", "v3.0")]
    assert Manifest.load(tmp_path / "out").source == {"model": "TechWolf/JobBERT-v3", "kind": "hub", "revision": commit}


def test_routes_with_several_modules_and_modules_after_the_router(jobbert_asym_model, tmp_path):
    """A route of two Dense layers, a route ending in Normalize, and a Normalize after the Asym module."""
    import torch
    from safetensors.torch import save_file

    model = _copy(jobbert_asym_model, tmp_path / "model")
    asym_config_path = model / "2_Asym" / "config.json"
    asym = json.loads(asym_config_path.read_text())
    width = json.loads((model / "2_Asym" / asym["structure"]["anchor"][0] / "config.json").read_text())["out_features"]
    extra = model / "2_Asym" / "7_Dense"
    extra.mkdir()
    (extra / "config.json").write_text(json.dumps({"in_features": width, "out_features": 40, "bias": False,
                                                   "activation_function": "torch.nn.modules.linear.Identity"}))
    torch.manual_seed(1)
    save_file({"linear.weight": torch.randn(40, width) * 0.1}, str(extra / "model.safetensors"))
    (model / "2_Asym" / "8_Normalize").mkdir()
    asym["types"].update({"7_Dense": "sentence_transformers.models.Dense",
                          "8_Normalize": "sentence_transformers.models.Normalize"})
    asym["structure"]["anchor"].append("7_Dense")
    asym["structure"]["positive"].append("8_Normalize")
    asym["structure"] = {"positive": asym["structure"]["positive"], "anchor": asym["structure"]["anchor"]}
    asym_config_path.write_text(json.dumps(asym))
    modules = json.loads((model / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"})
    (model / "modules.json").write_text(json.dumps(modules))

    export_model(ExportConfig(model=str(model), output=tmp_path / "out", show_progress=False))
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.default_head == "positive", "without default_route, the first route in structure"
    assert manifest.heads["anchor"].dimension == 40
    assert manifest.heads["anchor"].modules[-2:] == ["Dense(96->40, Identity)", "Normalize"]
    assert manifest.heads["positive"].modules[-2:] == ["Normalize", "Normalize"]
    for head in ("anchor", "positive"):
        assert manifest.validation["heads"][head]["min_cosine"] >= 0.99999
    texts = ["Data Scientist", "Pflegefachkraft", "机械工程师"]
    vectors = Embedder(tmp_path / "out").encode(texts, head="anchor")
    np.testing.assert_allclose(vectors, st_embeddings(model, texts, "anchor"), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
