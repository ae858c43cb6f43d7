"""Fast checks that the model fixtures are what the other tests assume they are."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer, normalizers
from transformers import AutoTokenizer

try:
    from tests.fixtures import models
except ImportError:  # see conftest.py
    from fixtures import models  # type: ignore[no-redef]

pytestmark = pytest.mark.full  # imports torch and sentence-transformers

# fixture name -> (embedding dimension, max_seq_length, tokenizer class that transformers must pick)
EXPECTED = {
    "jobbert_asym_model": (models.JOBBERT_OUT_FEATURES, models.JOBBERT_MAX_SEQ_LENGTH, "XLMRobertaTokenizer"),
    "jobbert_router_model": (models.JOBBERT_OUT_FEATURES, models.JOBBERT_MAX_SEQ_LENGTH, "XLMRobertaTokenizer"),
    "bert_model": (models.BERT_DENSE_FEATURES[-1], models.BERT_MAX_SEQ_LENGTH, "BertTokenizer"),
    "minilm_model": (384, 256, "BertTokenizer"),
}
# Unknown characters (emoji, a symbol outside the corpus), NFKC cases, mixed scripts, an empty string.
HARD_TEXTS = [
    "Data Scientist 🚀", "ﬁnance Ｍanager", "Ärztin / Arzt", "高级软件开发人员", "☃ ⅻ", "A" * 300, "",
]


@cache
def st_model(path: Path) -> SentenceTransformer:
    return SentenceTransformer(str(path), device="cpu")


def test_job_titles_corpus(job_titles: list[str]) -> None:
    assert len(job_titles) > 10_000
    assert job_titles == sorted(set(job_titles))
    assert all(title and title == title.strip() for title in job_titles)
    assert {"Software Engineer", "Krankenschwester", "Ingeniero de software"} <= set(job_titles)
    assert any("\u4e00" <= char <= "\u9fff" for title in job_titles for char in title)


@pytest.mark.parametrize("fixture", EXPECTED)
def test_loads_and_encodes(request: pytest.FixtureRequest, fixture: str) -> None:
    dimension, max_seq_length, tokenizer_class = EXPECTED[fixture]
    model = st_model(request.getfixturevalue(fixture))
    assert model.max_seq_length == max_seq_length
    assert type(model.tokenizer).__name__ == tokenizer_class
    embeddings = model.encode(HARD_TEXTS + ["Software Engineer"], convert_to_numpy=True)
    assert embeddings.shape == (len(HARD_TEXTS) + 1, dimension)
    assert np.isfinite(embeddings).all()
    assert np.abs(embeddings[0] - embeddings[-1]).max() > 1e-3  # different texts, different vectors


def test_jobbert_asym_files_are_in_the_st4_format(jobbert_asym_model: Path) -> None:
    modules = json.loads((jobbert_asym_model / "modules.json").read_text())
    assert [module["type"].rsplit(".", 1)[1] for module in modules] == ["Transformer", "Pooling", "Asym"]
    assert modules[2]["path"] == "2_Asym"
    assert (jobbert_asym_model / "model.safetensors").is_file()
    assert json.loads((jobbert_asym_model / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 64,
        "do_lower_case": False,
    }
    pooling = json.loads((jobbert_asym_model / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 64 and pooling["pooling_mode_mean_tokens"] is True

    asym = json.loads((jobbert_asym_model / "2_Asym" / "config.json").read_text())
    assert set(asym) == {"types", "structure", "parameters"}
    assert asym["parameters"] == {"allow_empty_key": True}
    assert list(asym["structure"]) == ["anchor", "positive"]
    weights = []
    for route in ("anchor", "positive"):
        (module_id,) = asym["structure"][route]
        assert module_id.split("_")[0].isdigit() and module_id.endswith("_Dense")
        assert asym["types"][module_id] == "sentence_transformers.models.Dense"
        dense = jobbert_asym_model / "2_Asym" / module_id
        assert json.loads((dense / "config.json").read_text()) == {
            "in_features": 64,
            "out_features": 96,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        }
        state = load_file(dense / "model.safetensors")
        assert set(state) == {"linear.weight", "linear.bias"}
        weights.append(state["linear.weight"])
    assert not np.allclose(weights[0].numpy(), weights[1].numpy())


def test_router_model_is_an_st6_save(jobbert_router_model: Path) -> None:
    router = json.loads((jobbert_router_model / "2_Router" / "router_config.json").read_text())
    assert list(router["structure"]) == ["anchor", "positive"]
    assert router["parameters"]["default_route"] == "anchor"
    # ST 6 keeps max_seq_length in tokenizer_config.json, not in sentence_bert_config.json.
    assert "max_seq_length" not in json.loads((jobbert_router_model / "sentence_bert_config.json").read_text())
    assert json.loads((jobbert_router_model / "tokenizer_config.json").read_text())["model_max_length"] == 64


def test_asym_and_router_models_agree(jobbert_asym_model: Path, jobbert_router_model: Path) -> None:
    asym, router = st_model(jobbert_asym_model), st_model(jobbert_router_model)
    texts = ["Software Engineer", "Krankenpfleger", "数据科学家", "Data Scientist 🚀"]
    anchor = asym.encode(texts, task="anchor")
    np.testing.assert_allclose(router.encode(texts, task="anchor"), anchor, atol=1e-6)
    np.testing.assert_allclose(router.encode(texts, task="positive"), asym.encode(texts, task="positive"), atol=1e-6)
    np.testing.assert_allclose(asym.encode(texts), anchor, atol=1e-6)  # "anchor" is the default route
    assert np.abs(anchor - asym.encode(texts, task="positive")).max() > 0.1


@pytest.mark.parametrize("fixture", EXPECTED)
def test_autotokenizer_matches_tokenizer_json(
    request: pytest.FixtureRequest, job_titles: list[str], fixture: str
) -> None:
    """transformers 5 rebuilds XLM-R / BERT tokenizers from the vocab; the ids must still match."""
    path = request.getfixturevalue(fixture)
    theirs = AutoTokenizer.from_pretrained(path)
    ours = Tokenizer.from_file(str(path / "tokenizer.json"))
    ours.no_padding()  # MiniLM's tokenizer.json has padding and truncation to 128 baked in
    ours.no_truncation()
    texts = job_titles[::7] + HARD_TEXTS  # stripped texts; for surrounding whitespace see below
    assert [encoding.ids for encoding in ours.encode_batch(texts)] == theirs(texts)["input_ids"]


def test_unknown_characters_become_unk(jobbert_asym_model: Path, bert_model: Path) -> None:
    xlmr = Tokenizer.from_file(str(jobbert_asym_model / "tokenizer.json"))
    assert xlmr.encode("🚀").ids[-2] == xlmr.token_to_id("<unk>")
    assert xlmr.encode("ﬁnance").ids == xlmr.encode("finance").ids  # the Precompiled (NFKC-ish) normalizer
    bert = Tokenizer.from_file(str(bert_model / "tokenizer.json"))
    assert bert.encode("🚀").ids == [bert.token_to_id(token) for token in ("[CLS]", "[UNK]", "[SEP]")]
    assert bert.encode("Ärztin", "Arzt").type_ids[-1] == 1


def test_surrounding_whitespace(jobbert_asym_model: Path) -> None:
    """Documents a real JobBERT-v3 quirk: its raw tokenizer.json keeps a trailing "▁" token.

    ST 6 passes texts unstripped, but transformers 5's rebuilt XLM-R tokenizer splits on
    whitespace first, so sentence-transformers' embeddings ignore surrounding whitespace.
    """
    raw = Tokenizer.from_file(str(jobbert_asym_model / "tokenizer.json"))
    assert raw.encode("Data Scientist ").ids == raw.encode("Data Scientist").ids[:-1] + [raw.token_to_id("▁"), 2]
    model = st_model(jobbert_asym_model)
    np.testing.assert_allclose(model.encode([" Data  Scientist \t"]), model.encode(["Data Scientist"]), atol=1e-6)


def test_pickled_variant(jobbert_pickled_model: Path, jobbert_asym_model: Path) -> None:
    assert not (jobbert_pickled_model / "model.safetensors").exists()
    assert (jobbert_pickled_model / "pytorch_model.bin").is_file()
    texts = ["Software Engineer", "Produktmanager"]
    np.testing.assert_allclose(
        st_model(jobbert_pickled_model).encode(texts), st_model(jobbert_asym_model).encode(texts), atol=1e-6
    )


def test_builds_are_reproducible(jobbert_asym_model: Path, tmp_path: Path) -> None:
    again = models.build_jobbert_asym(tmp_path / "again")
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(jobbert_asym_model) for p in jobbert_asym_model.rglob("*") if p.is_file())
    for name in files:
        assert (again / name).read_bytes() == (jobbert_asym_model / name).read_bytes(), name


def test_precompiled_charsmap_maps_every_character() -> None:
    normalizer = normalizers.Precompiled(models.nfkc_charsmap())
    mapping = models._nfkc_ish_mapping()
    assert {char: normalizer.normalize_str(char) for char in mapping} == mapping
    assert normalizer.normalize_str("Plain ASCII, Umlaute äöü, 中文 🚀") == "Plain ASCII, Umlaute äöü, 中文 🚀"
