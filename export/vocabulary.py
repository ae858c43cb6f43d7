"""Vocabulary trimming: keep only the tokens a corpus needs, plus every single-character piece.

The token embedding table is most of a multilingual encoder (JobBERT-v3's XLM-R table is 69% of
its parameters), and a deployment that embeds job titles in a few languages reads a small part
of it. Trimming keeps the rows of the tokens that the corpus's texts use, the special tokens and
every single-character piece (so that no text outside the corpus is ever cut into anything worse
than characters), and renumbers them in their old order.

It is exact for the corpus, by the way each tokenizer model chooses pieces:

* **Unigram** (XLM-R, SentencePiece): the segmentation is the best-scoring one among the pieces
  in the vocabulary. A corpus text's best segmentation uses only kept pieces, and removing other
  pieces cannot make a better one.
* **WordPiece** (BERT, MPNet): greedy longest match. Each piece chosen for a corpus text is kept,
  and no longer piece existed at that position.

BPE merges build tokens out of other tokens, so removing one changes what others become; it is
refused, as is any other model. `trim` checks the claim anyway: the trimmed tokenizer must give
every corpus text the remapped ids of the original, or the export stops.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from jobbert_onnx.runtime.errors import JobbertOnnxError

TRIMMABLE_MODELS = ("Unigram", "WordPiece")
_BATCH = 1024


class VocabularyError(JobbertOnnxError):
    """The vocabulary cannot be trimmed exactly (the reason is in the message)."""


@dataclass(frozen=True)
class TrimmedVocabulary:
    """The kept token ids of the original vocabulary, in order (new id = position), and the
    trimmed tokenizer that numbers them so."""

    kept: np.ndarray
    original_size: int
    tokenizer_json: str

    def remap(self, ids: Sequence[int]) -> list[int]:
        """New ids of original ids (all of them must be kept)."""
        return np.searchsorted(self.kept, np.asarray(ids, dtype=np.int64)).tolist()

    def alike(self, original: Tokenizer, trimmed: Tokenizer, texts: Sequence[str]) -> list[bool]:
        """For each text, whether the trimmed tokenizer gives it its original ids, all kept and
        renumbered. Texts are encoded a chunk at a time (again, not kept from an earlier pass), so
        memory stays bounded by a chunk however large the corpus."""
        out = []
        for start in range(0, len(texts), _BATCH):
            chunk = list(texts[start:start + _BATCH])
            before = original.encode_batch(chunk, add_special_tokens=True)
            after = trimmed.encode_batch(chunk, add_special_tokens=True)
            for old, new in zip(before, after):
                ids = np.asarray(old.ids, dtype=np.int64)
                position = np.searchsorted(self.kept, ids)  # the new id, where the old one was kept
                kept = self.kept[np.minimum(position, len(self.kept) - 1)] == ids
                out.append(bool(kept.all()) and position.tolist() == new.ids)
        return out

    def to_manifest(self, corpus_texts: int, corpus_sha256: str) -> dict[str, Any]:
        """What the manifest records: texts outside the corpus may tokenize into smaller pieces than
        the full vocabulary gives them."""
        return {"trimmed": True, "kept_tokens": int(len(self.kept)), "original_tokens": self.original_size,
                "corpus_texts": corpus_texts, "corpus_sha256": corpus_sha256}


def _model(data: dict[str, Any]) -> dict[str, Any]:
    model = data.get("model") or {}
    kind = model.get("type")
    if kind not in TRIMMABLE_MODELS:
        raise VocabularyError(
            f"the tokenizer's model is {kind or 'unknown'}: only {' and '.join(TRIMMABLE_MODELS)} vocabularies can be "
            "trimmed exactly (a BPE token is built by merges of other tokens, so removing one changes the others)")
    if kind == "Unigram" and model.get("byte_fallback"):
        raise VocabularyError("the Unigram tokenizer falls back to byte pieces; trimming it is not supported")
    return model


def _pieces(model: dict[str, Any]) -> list[str]:
    """The model's pieces by id."""
    if model["type"] == "Unigram":
        return [piece for piece, _ in model["vocab"]]
    pieces = [""] * len(model["vocab"])
    for piece, index in model["vocab"].items():
        pieces[index] = piece
    return pieces


def _single_characters(model: dict[str, Any], pieces: list[str]) -> list[int]:
    """Ids of the pieces that hold one character (with the word-start or continuation mark)."""
    if model["type"] == "Unigram":
        strip = lambda piece: piece[1:] if piece.startswith("▁") else piece  # noqa: E731
    else:
        prefix = model.get("continuing_subword_prefix") or "##"
        strip = lambda piece: piece[len(prefix):] if piece.startswith(prefix) else piece  # noqa: E731
    return [i for i, piece in enumerate(pieces) if len(strip(piece)) <= 1]


def _used_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> set[int]:
    used: set[int] = set()
    for start in range(0, len(texts), _BATCH):
        for encoding in tokenizer.encode_batch(list(texts[start:start + _BATCH]), add_special_tokens=True):
            used.update(encoding.ids)
    return used


def _remap_processor(processor: dict[str, Any] | None, new_id) -> None:
    """Renumber the special tokens a post-processor inserts, in place."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for inner in processor.get("processors", []):
            _remap_processor(inner, new_id)
    elif kind == "TemplateProcessing":
        for special in processor.get("special_tokens", {}).values():
            special["ids"] = [new_id(i) for i in special["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            token, index = processor[key]
            processor[key] = [token, new_id(index)]


def trim(tokenizer_json: str, texts: Iterable[str], fixed_ids: Iterable[int] = ()) -> TrimmedVocabulary:
    """The vocabulary that `texts` need, with the special tokens and every single-character piece,
    as a `TrimmedVocabulary`. `fixed_ids` (e.g. the pad token, which a graph may compare ids with)
    must keep their ids.

    `texts` are tokenized as they are (prepare them as the runtime does first: strip, prompt).
    Raises VocabularyError for a tokenizer model that cannot be trimmed exactly, when a fixed id
    would move, and when the trimmed tokenizer gives any corpus text other ids than the remapped
    original ones.
    """
    data = json.loads(tokenizer_json)
    model = _model(data)
    pieces = _pieces(model)
    texts = list(texts)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    special = {token["id"] for token in data.get("added_tokens", [])}
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        special.add(model["unk_id"])
    if model["type"] == "WordPiece" and model.get("unk_token") in model["vocab"]:
        special.add(model["vocab"][model["unk_token"]])
    kept = np.array(sorted(_used_ids(tokenizer, texts) | special | set(_single_characters(model, pieces)) | set(fixed_ids)),
                    dtype=np.int64)
    if kept[-1] >= len(pieces):
        raise VocabularyError("the tokenizer has added tokens outside its model's vocabulary; trimming it is not supported")
    new_ids = {int(old): new for new, old in enumerate(kept)}

    def new_id(old: int) -> int:
        if old not in new_ids:
            raise VocabularyError(f"token id {old} is used by the tokenizer's configuration but was not kept")
        return new_ids[old]

    for fixed in fixed_ids:
        if new_id(fixed) != fixed:
            raise VocabularyError(f"token id {fixed} ({pieces[fixed]!r}) would become {new_id(fixed)}; the encoder "
                                  "graph compares ids with it (the pad id), so it must keep its id. Trimming needs "
                                  "every token before it kept")
    trimmed = copy.deepcopy(data)
    if model["type"] == "Unigram":
        trimmed["model"]["vocab"] = [model["vocab"][i] for i in kept]
        if model.get("unk_id") is not None:
            trimmed["model"]["unk_id"] = new_id(model["unk_id"])
    else:
        trimmed["model"]["vocab"] = {pieces[i]: new for new, i in enumerate(kept)}
    for token in trimmed.get("added_tokens", []):
        token["id"] = new_id(token["id"])
    _remap_processor(trimmed.get("post_processor"), new_id)
    if trimmed.get("padding"):
        trimmed["padding"]["pad_id"] = new_id(trimmed["padding"]["pad_id"])
    result = TrimmedVocabulary(kept=kept, original_size=len(pieces), tokenizer_json=json.dumps(trimmed, ensure_ascii=False))
    alike = result.alike(tokenizer, Tokenizer.from_str(result.tokenizer_json), texts)
    if not all(alike):
        index = alike.index(False)
        raise VocabularyError(f"the trimmed tokenizer splits corpus text {index + 1} ({texts[index][:60]!r}) "
                              "differently from the full one")
    return result


def trim_embedding_table(model, vocabulary: TrimmedVocabulary, ids: str = "input_ids") -> list[str]:
    """Keep only the kept rows of the encoder graph's token tables, in place; return their names.

    The token tables are the constant tables that a `Gather` reads with the graph input `ids`:
    the table, and an int8 table's row scales. One may have more rows than the tokenizer has
    tokens (a padded vocabulary); rows past the tokenizer are unreachable and go too.
    """
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    tables = sorted({node.input[0] for node in model.graph.node
                     if node.op_type == "Gather" and node.input[1] == ids and node.input[0] in initializers
                     and len(initializers[node.input[0]].dims) == 2
                     and initializers[node.input[0]].dims[0] >= vocabulary.original_size})
    if not tables:
        raise VocabularyError(f"the encoder has no token table of {vocabulary.original_size} rows or more "
                              f"looked up by {ids!r}")
    for name in tables:
        rows = numpy_helper.to_array(initializers[name])[vocabulary.kept]
        initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(rows), name))
    return tables
