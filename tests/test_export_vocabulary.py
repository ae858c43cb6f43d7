"""`export --keep-vocabulary`: a trimmed artifact embeds its corpus exactly as the full one,
records the trimming, and refuses a corpus file that cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from jobbert_onnx.export import ExportConfig, export_model
from jobbert_onnx.runtime import Embedder, cosine_rows

from .fixtures.corpus import load_job_titles

pytestmark = pytest.mark.full  # exports

TITLES = load_job_titles()
CORPUS = TITLES[::40]  # every script in the sorted file


@pytest.mark.parametrize("fixture,precision", [("jobbert_asym_model", "int8"), ("bert_model", "fp32")])
def test_trimmed_artifact_embeds_its_corpus_as_the_full_one(request, exported, tmp_path: Path, fixture: str,
                                                            precision: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    full = exported(fixture, precision)
    trimmed = export_model(ExportConfig(model=str(request.getfixturevalue(fixture)), output=tmp_path / "trimmed",
                                        precision=precision, keep_vocabulary=corpus, show_progress=False))
    manifest = json.loads((trimmed / "manifest.json").read_text())
    record = manifest["encoder"]["transform"]["vocabulary"]
    assert record["trimmed"] and record["corpus_texts"] == len(CORPUS)
    assert record["kept_tokens"] < record["original_tokens"]
    assert manifest["validation"]["performed"]
    # The int8 plan is chosen on the full vocabulary with every probe, as an untrimmed export does.
    full_manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["encoder"]["transform"].get("fp32_matmuls") == full_manifest["encoder"]["transform"].get("fp32_matmuls")
    assert (trimmed / "encoder.onnx.data").stat().st_size < (full / "encoder.onnx.data").stat().st_size
    # The shipped tokenizer numbers the kept tokens in their old order, so every corpus text's ids
    # are its full ids, renumbered.
    full_tokenizer = Tokenizer.from_file(str(full / "tokenizer.json"))
    trimmed_tokenizer = Tokenizer.from_file(str(trimmed / "tokenizer.json"))
    kept = sorted(full_tokenizer.get_vocab()[t] for t in trimmed_tokenizer.get_vocab())
    for text in CORPUS:
        assert trimmed_tokenizer.encode(text).ids == [kept.index(i) for i in full_tokenizer.encode(text).ids], text
    a, b = Embedder(full), Embedder(trimmed)
    for head in a.heads:
        np.testing.assert_allclose(b.encode(CORPUS, head=head), a.encode(CORPUS, head=head), rtol=0, atol=1e-5)
        # Outside the corpus a text may split into smaller pieces: close, not equal.
        outside = TITLES[20::40]
        assert cosine_rows(a.encode(outside, head=head), b.encode(outside, head=head)).mean() > 0.5


def test_an_unreadable_corpus_is_refused_before_anything_is_written(jobbert_asym_model, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="--keep-vocabulary .*missing.txt"):
        export_model(ExportConfig(model=str(jobbert_asym_model), output=tmp_path / "out", precision="fp32",
                                  keep_vocabulary=tmp_path / "missing.txt", show_progress=False))
    assert not (tmp_path / "out").exists()
