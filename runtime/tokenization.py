"""Texts -> token id arrays, reproducing sentence-transformers' tokenization with `tokenizers` alone."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from .errors import ArtifactError, TextTooLongError
from .manifest import TokenizerEntry
from .prepared import PreparedTexts, from_rows
from .prefix_cut import PrefixCutter, build_normalizer, describe, too_long, whole_limit

# Python strings may hold lone surrogates (e.g. from `surrogateescape` decoding), but the Rust
# tokenizer only accepts valid Unicode and raises on them; U+FFFD is what a lenient UTF-8 decoder
# would have produced for the same bad bytes.
_SURROGATES = re.compile("[\ud800-\udfff]")
# Texts are tokenized this many at a time, and at most CHUNK_CHARS characters at a time (a text
# that no rule can cut is tokenized whole, and its encoding keeps every token past the limit as
# overflow): the encodings alive at once stay bounded whatever was sent.
COUNT_CHUNK = 1024
CHUNK_CHARS = 1 << 17


def _has_lowercase(normalizer: dict | None) -> bool:
    """Same test as sentence-transformers: a top-level `Lowercase`, or one inside a `Sequence`."""
    if normalizer is None:
        return False
    parts = normalizer["normalizers"] if normalizer["type"] == "Sequence" else [normalizer]
    return any(part["type"] == "Lowercase" for part in parts)


class TextTokenizer:
    """Batch tokenizer: strip, optional lower-casing, truncation to `max_seq_length`, right padding
    to the longest text of the batch.

    Long texts are cut before tokenizing (`prefix_cut.PrefixCutter`) where the cut provably keeps
    the ids, so time and memory depend on what truncation keeps, not on the text's length.
    Truncation is configured once here and never changed afterwards, so one instance can serve
    concurrent calls (mutating it would need an exclusive borrow of the Rust object).
    """

    def __init__(self, tokenizer: Tokenizer, spec: TokenizerEntry) -> None:
        self.spec = spec
        self._tokenizer = tokenizer
        # Settings saved inside tokenizer.json (e.g. a fixed pad length or the model_max_length
        # truncation) must not leak in: sentence-transformers applies its own. Padding is done here.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if spec.do_lower_case:
            # sentence-transformers 6 prepends Lowercase to the backend normalizer unless present.
            normalizer = describe(tokenizer.normalizer)
            if not _has_lowercase(normalizer):
                parts = [] if normalizer is None else normalizer["normalizers"] if normalizer["type"] == "Sequence" \
                    else [normalizer]
                tokenizer.normalizer = build_normalizer([{"type": "Lowercase"}, *parts])
        # Counts the special tokens, like transformers' `truncation=True, max_length=...`.
        tokenizer.enable_truncation(spec.max_seq_length, stride=0, strategy="longest_first", direction="right")
        self._cutter = PrefixCutter.for_tokenizer(tokenizer, spec.max_seq_length)
        self._special_ids = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}

    @classmethod
    def from_file(cls, path: str | Path, spec: TokenizerEntry) -> "TextTokenizer":
        """Load a `tokenizer.json`; raises `ArtifactError` naming the file if it cannot be read."""
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
            raise ArtifactError(f"{path}: cannot load the tokenizer ({exc}).") from exc
        return cls(tokenizer, spec)

    @property
    def cuts_long_texts(self) -> bool:
        """Whether long texts are cut before tokenizing (False: this tokenizer has a stage the cutter
        does not know, and long texts are tokenized whole)."""
        return self._cutter is not None

    def prepare(self, text: str, prompt: str = "") -> str:
        """The text exactly as it is handed to the Rust tokenizer: stripped, `prompt` prepended, lone
        surrogates replaced, and cut when long (same ids after truncation)."""
        if self.spec.strip:
            text = text.strip()
        text = _SURROGATES.sub("\ufffd", prompt + text)  # no copy when there is nothing to change
        if self._cutter is not None:
            return self._cutter.cut(text)
        if len(text) > whole_limit(self.spec.max_seq_length):
            raise too_long(text, self.spec.max_seq_length, "this tokenizer has a stage that the long-text cut does "
                           "not know, so no cut is proven")
        return text

    def prepare_many(self, texts: Sequence[str], prompt: str = "", first: int = 0) -> list[str]:
        """Each text prepared (`prepare`). Raises `TextTooLongError` naming the first text that is too
        long to tokenize and cannot be cut, by its index plus `first` (where `texts` starts in the
        caller's list)."""
        prepared = []
        for i, text in enumerate(texts):
            try:
                prepared.append(self.prepare(text, prompt))
            except TextTooLongError as exc:
                raise TextTooLongError(exc.detail, index=first + i) from None
        return prepared

    def encodings(self, prepared: Sequence[str]) -> list[Encoding]:
        """`tokenizers` encodings of prepared texts: truncated, special tokens added, unpadded."""
        return self._tokenizer.encode_batch(list(prepared), add_special_tokens=True)

    def prepare_tokens(self, texts: Sequence[str], prompt: str = "", skip: int = 0) -> PreparedTexts:
        """Every text prepared (`prepare`) and tokenized once: ids after truncation, special tokens
        included, unpadded, with `skip` leading tokens left out of pooling. Works in chunks of at most
        `COUNT_CHUNK` texts and `CHUNK_CHARS` characters. Raises `TextTooLongError` naming the first
        text that is too long to tokenize and cannot be cut, by its index in `texts`."""
        ids: list[list[int]] = []
        type_ids: list[list[int]] = []
        chunk: list[str] = []
        chars = 0

        def flush() -> None:
            for encoding in self.encodings(chunk):
                ids.append(encoding.ids)
                type_ids.append(encoding.type_ids)
            chunk.clear()

        for start in range(0, len(texts), COUNT_CHUNK):
            for text in self.prepare_many(texts[start:start + COUNT_CHUNK], prompt, first=start):
                if chunk and chars + len(text) > CHUNK_CHARS:
                    flush()
                    chars = 0
                chunk.append(text)
                chars += len(text)
            flush()
            chars = 0
        return from_rows(ids, type_ids, skip)

    def token_counts(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        """Tokens per text after truncation, special tokens included (what a batch row costs)."""
        return self.prepare_tokens(texts, prompt).counts

    def tokenize(self, texts: Sequence[str], prompt: str = "") -> list[list[int]]:
        """Token ids per text after truncation, special tokens included, unpadded."""
        prepared = self.prepare_tokens(texts, prompt)
        return [prepared.row_ids(i).tolist() for i in range(len(prepared))]

    def batch(self, prepared: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize prepared texts; int64 `input_ids`, `attention_mask`, `token_type_ids` [batch, seq],
        right-padded with the pad token (type id 0) to the longest text."""
        encodings = self.encodings(prepared)
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), width), self.spec.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def __call__(self, texts: Sequence[str], prompt: str = "") -> dict[str, np.ndarray]:
        """Tokenize a batch; returns int64 `input_ids`, `attention_mask`, `token_type_ids` [batch, seq]."""
        return self.batch(self.prepare_many(texts, prompt))

    def prompt_length(self, prompt: str) -> int:
        """Tokens that pooling leaves out for `prompt` when the model says `include_prompt: false`,
        by sentence-transformers' rule: the prompt tokenized alone (special tokens included, so a
        leading CLS counts), less one when its last token is a special token; 0 for no prompt."""
        if not prompt:
            return 0
        ids = self._tokenizer.encode(_SURROGATES.sub("\ufffd", prompt), add_special_tokens=True).ids
        return len(ids) - (1 if ids and ids[-1] in self._special_ids else 0)
