"""Prompts (issue 8): the runtime prepends a model's prompt to each stripped text and, when its
Pooling says `include_prompt: false`, leaves the prompt's tokens out of pooling, as
sentence-transformers 6 does (the prompt tokenized alone, less its trailing special token: a
leading CLS is left out too).

The toy artifact checks the rules against numpy; the fixture models check parity with
sentence-transformers, through a patched manifest and through the exporter end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from . import toy_artifact as toy
from .reference import st_model
from jobbert_onnx import Embedder
from jobbert_onnx.runtime import Manifest

PROMPTS = {"query": "hello world ", "passage": "data ", "empty": ""}


def _patch(artifact: Path, **changes) -> None:
    """Set top-level manifest fields, and `pooling.include_prompt` / `pooling.modes` when given."""
    path = artifact / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("include_prompt", "modes"):
        if key in changes:
            data["pooling"][key] = changes.pop(key)
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy.build(tmp_path_factory.mktemp("toy"))


def _toy(toy_folder: Path, tmp_path: Path, **changes) -> Embedder:
    folder = Path(shutil.copytree(toy_folder, tmp_path / "artifact"))
    _patch(folder, prompts=PROMPTS, default_prompt_name="query", **changes)
    return Embedder(folder)


def _toy_pooled(text: str, skip: int) -> np.ndarray:
    """The toy model's pooled vector with the first `skip` tokens left out of the mean (the encoder
    still sees them all)."""
    ids = np.array(toy.reference_ids(text))
    tok = toy.EMBEDDINGS[ids].astype(np.float64)
    token_embeddings = tok + toy.POSITION_EMBEDDINGS[: len(ids)] + tok.mean(axis=0)
    return token_embeddings[skip:].mean(axis=0)


# -- the rules, on the toy artifact -----------------------------------------------------------
def test_default_prompt_is_prepended_to_the_stripped_text(toy_folder: Path, tmp_path: Path) -> None:
    embedder = _toy(toy_folder, tmp_path)
    expected = toy.reference_ids("hello world nurse java")
    assert embedder.tokenize(["  nurse java "]) == [expected]
    assert embedder.tokenize(["  nurse java "], prompt_name="query") == [expected]
    assert embedder.tokenize(["nurse java"], prompt="hello world ") == [expected]
    assert embedder.tokenize(["nurse"], prompt_name="passage") == [toy.reference_ids("data nurse")]
    # An empty prompt is no prompt, as in sentence-transformers.
    assert embedder.tokenize(["nurse"], prompt="") == embedder.tokenize(["nurse"], prompt_name="empty") \
        == [toy.reference_ids("nurse")]
    assert embedder.token_counts(["nurse java"]).tolist() == [len(expected)]


def test_prompt_errors(toy_folder: Path, tmp_path: Path) -> None:
    embedder = _toy(toy_folder, tmp_path)
    with pytest.raises(ValueError, match="'doc' does not exist; this model's prompts: 'query', 'passage', 'empty'"):
        embedder.encode(["nurse"], prompt_name="doc")
    with pytest.raises(ValueError, match="not both"):
        embedder.encode(["nurse"], prompt_name="query", prompt="x ")
    with pytest.raises(TypeError, match="prompt must be a str"):
        embedder.tokenize(["nurse"], prompt=3)  # type: ignore[arg-type]


def test_no_prompts(toy_folder: Path) -> None:
    embedder = Embedder(toy_folder)
    assert embedder.tokenize(["nurse"]) == [toy.reference_ids("nurse")]
    with pytest.raises(ValueError, match="this model's prompts: none"):
        embedder.tokenize(["nurse"], prompt_name="query")


@pytest.mark.parametrize("include_prompt", [False, True])
def test_pooling_leaves_out_the_prompt(toy_folder: Path, tmp_path: Path, include_prompt: bool) -> None:
    embedder = _toy(toy_folder, tmp_path, include_prompt=include_prompt)
    texts = ["nurse java", "", "python " * 20, "senior data engineer"]
    # "hello world " tokenized alone is [CLS] hello world [SEP]: [CLS], hello and world are left out.
    skip = 0 if include_prompt else 3
    expected = np.stack([_toy_pooled("hello world " + t.strip(), skip) for t in texts])
    pooled = embedder.encode_pooled(texts, batch_size=3)
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    np.testing.assert_array_equal(embedder.encode(texts, batch_size=3), embedder.apply_head(pooled))
    # Another prompt, another length: "data " is [CLS] data [SEP], so 2 tokens are left out.
    expected = np.stack([_toy_pooled("data " + t.strip(), 0 if include_prompt else 2) for t in texts])
    np.testing.assert_allclose(embedder.encode_pooled(texts, prompt_name="passage"), expected, atol=1e-5)


def test_weightedmean_without_the_prompt_is_refused(toy_folder: Path, tmp_path: Path) -> None:
    # The pooling graph would shift every position weight by the prompt's length.
    embedder = _toy(toy_folder, tmp_path, include_prompt=False, modes=["weightedmean"])
    with pytest.raises(ValueError, match="weightedmean"):
        embedder.encode(["nurse"])
    assert embedder.encode(["nurse"], prompt="").shape == (1, 6)


# -- parity with sentence-transformers --------------------------------------------------------
ST_PROMPTS = {"query": "query: ", "passage": "Represent this job title: ", "empty": ""}
TEXTS = ["Software Engineer", "  Produktmanager  ", "高级软件开发人员", "Científica de datos", "", "nurse",
         "Python, SQL, statistics, machine learning, data pipelines, Spark, Kafka, " * 6]


def _with_prompts(model: Path, folder: Path, include_prompt: bool) -> Path:
    """A copy of the checkpoint `model` with ST_PROMPTS ("query" by default) and `include_prompt`."""
    shutil.copytree(model, folder)
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(prompts=ST_PROMPTS, default_prompt_name="query")
    config_path.write_text(json.dumps(config), encoding="utf-8")
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    [pooling] = [m["path"] for m in modules if m["type"].endswith("Pooling")]
    pooling_path = folder / pooling / "config.json"
    pooling_config = json.loads(pooling_path.read_text(encoding="utf-8"))
    pooling_config["include_prompt"] = include_prompt
    pooling_path.write_text(json.dumps(pooling_config), encoding="utf-8")
    return folder


def _st(folder: Path, head: str | None, **prompt) -> np.ndarray:
    """sentence-transformers' embeddings of the stripped TEXTS (the runtime strips, ST 6 does not)."""
    task = {"task": head} if head else {}
    return st_model(folder).encode([t.strip() for t in TEXTS], batch_size=4, convert_to_numpy=True, **task, **prompt)


def _assert_parity(embedder: Embedder, folder: Path) -> None:
    heads = embedder.heads if len(embedder.heads) > 1 else [None]
    for head in heads:
        for prompt in ({}, {"prompt_name": "passage"}, {"prompt": "custom prompt: "}, {"prompt_name": "empty"}):
            ours = embedder.encode(TEXTS, head=head, batch_size=3, **prompt)
            np.testing.assert_allclose(ours, _st(folder, head, **prompt), atol=2e-5, err_msg=f"{head} {prompt}")


@pytest.mark.parametrize("include_prompt", [False, True])
@pytest.mark.parametrize("fixture", ["bert_model", "jobbert_router_model"])
def test_parity_through_a_patched_manifest(request: pytest.FixtureRequest, exported, tmp_path: Path,
                                           fixture: str, include_prompt: bool) -> None:
    # bert_model pools CLS (left out with the prompt), jobbert_router_model the mean.
    folder = _with_prompts(request.getfixturevalue(fixture), tmp_path / "model", include_prompt)
    artifact = Path(shutil.copytree(exported(fixture, "fp32"), tmp_path / "artifact"))
    _patch(artifact, prompts=ST_PROMPTS, default_prompt_name="query", include_prompt=include_prompt)
    _assert_parity(Embedder(artifact), folder)


def test_parity_end_to_end(bert_model: Path, tmp_path: Path) -> None:
    from jobbert_onnx.export import ExportConfig, export_model

    folder = _with_prompts(bert_model, tmp_path / "model", include_prompt=False)
    artifact = export_model(ExportConfig(model=str(folder), output=tmp_path / "artifact", precision="fp32",
                                         show_progress=False))
    manifest = Manifest.load(artifact)
    assert manifest.prompts == ST_PROMPTS and manifest.default_prompt_name == "query"
    assert manifest.pooling.include_prompt is False
    _assert_parity(Embedder(artifact), folder)
