"""export/vocabulary.py: a trimmed vocabulary gives every corpus text the same (remapped) ids,
keeps every single character, shrinks the token table, and refuses what it cannot remap."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers

from jobbert_onnx.export.vocabulary import VocabularyError, trim, trim_embedding_table

from .fixtures.corpus import load_job_titles
from .fixtures.models import _bert_tokenizer_json, _xlmr_tokenizer_json

pytestmark = pytest.mark.full  # the fixture tokenizers come with the torch fixtures

TITLES = load_job_titles()
CORPUS, OUTSIDE = TITLES[:300], TITLES[300::30]  # the file is sorted: OUTSIDE spans every script


@pytest.mark.parametrize("build", [_xlmr_tokenizer_json, _bert_tokenizer_json], ids=["unigram", "wordpiece"])
def test_corpus_texts_keep_their_ids_and_others_never_get_more_unknowns(build) -> None:
    full_json = build()
    full = Tokenizer.from_str(full_json)
    vocabulary = trim(full_json, CORPUS)
    trimmed = Tokenizer.from_str(vocabulary.tokenizer_json)
    assert len(vocabulary.kept) < 0.8 * full.get_vocab_size()
    assert trimmed.get_vocab_size() == len(vocabulary.kept)
    for text in CORPUS:
        assert trimmed.encode(text).ids == vocabulary.remap(full.encode(text).ids), text
    # Outside the corpus texts may split into smaller pieces, never into unknown ones.
    unk = json.loads(full_json)["model"].get("unk_id", full.token_to_id("[UNK]"))
    new_unk = vocabulary.remap([unk])[0]
    changed = 0
    for text in OUTSIDE:
        before, after = full.encode(text).ids, trimmed.encode(text).ids
        assert after.count(new_unk) == before.count(unk), text
        changed += vocabulary.remap([i for i in before if i in set(vocabulary.kept.tolist())]) != after
    assert changed > 0  # the test would not see a trimming that kept everything


def test_bpe_is_refused_naming_the_reason() -> None:
    bpe = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(VocabularyError, match="BPE"):
        trim(bpe.to_str(), ["ab"])


def test_the_token_table_keeps_the_kept_rows_in_order() -> None:
    full_json = _xlmr_tokenizer_json()
    vocabulary = trim(full_json, CORPUS[:20])
    # A padded vocabulary: rows past the tokenizer's last id are unreachable, and go too.
    table = np.random.default_rng(0).normal(size=(vocabulary.original_size + 3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["rows"], axis=0)], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    trim_embedding_table(model, vocabulary)
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (len(vocabulary.kept), 4)
    full, trimmed = Tokenizer.from_str(full_json), Tokenizer.from_str(vocabulary.tokenizer_json)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for text in CORPUS[:20]:
        rows = session.run(None, {"input_ids": np.array(trimmed.encode(text).ids, np.int64)})[0]
        np.testing.assert_array_equal(rows, table[full.encode(text).ids])
    with pytest.raises(VocabularyError, match="no token table"):
        trim_embedding_table(model, vocabulary)  # already trimmed: no table of the original size
