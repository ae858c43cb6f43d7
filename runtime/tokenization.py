"""Texts -> token id arrays, reproducing sentence-transformers' tokenization with `tokenizers` alone."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence

from .errors import ArtifactError
from .manifest import TokenizerSpec

# Python strings may hold lone surrogates (e.g. from `surrogateescape` decoding), but the Rust
# tokenizer only accepts valid Unicode and raises on them; U+FFFD is what a lenient UTF-8 decoder
# would have produced for the same bad bytes.
_SURROGATES = re.compile("[\ud800-\udfff]")


def _has_lowercase(normalizer: object) -> bool:
    """Same test as sentence-transformers: a top-level `Lowercase`, or one inside a `Sequence`."""
    if normalizer is None:
        return False
    if isinstance(normalizer, Lowercase):
        return True
    if isinstance(normalizer, NormalizerSequence):
        return any(isinstance(n, Lowercase) for n in normalizer)
    return False


class TextTokenizer:
    """Batch tokenizer: strip, optional lower-casing, truncation to `max_seq_length`, right padding
    to the longest text of the batch.

    Padding and truncation are configured once here and never changed afterwards, so one instance
    can serve concurrent `__call__`s (mutating them would need an exclusive borrow of the Rust object).
    """

    def __init__(self, tokenizer: Tokenizer, spec: TokenizerSpec) -> None:
        self.spec = spec
        self._tokenizer = tokenizer
        # Settings saved inside tokenizer.json (e.g. a fixed pad length or the model_max_length
        # truncation) must not leak in: sentence-transformers applies its own.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if spec.do_lower_case:
            # sentence-transformers 6 prepends Lowercase to the backend normalizer unless present.
            normalizer = tokenizer.normalizer
            if not _has_lowercase(normalizer):
                normalizers = [Lowercase()]
                if isinstance(normalizer, NormalizerSequence):
                    normalizers += list(normalizer)
                elif normalizer is not None:
                    normalizers.append(normalizer)
                tokenizer.normalizer = NormalizerSequence(normalizers)
        # Counts the special tokens, like transformers' `truncation=True, max_length=...`.
        tokenizer.enable_truncation(spec.max_seq_length, stride=0, strategy="longest_first", direction="right")
        # An unpadded twin counts tokens, so that batches can be formed by token count.
        self._counter = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.enable_padding(direction="right", pad_id=spec.pad_token_id, pad_type_id=0, pad_token=spec.pad_token)

    @classmethod
    def from_file(cls, path: str | Path, spec: TokenizerSpec) -> "TextTokenizer":
        """Load a `tokenizer.json`; raises `ArtifactError` naming the file if it cannot be read."""
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
            raise ArtifactError(f"{path}: cannot load the tokenizer ({exc}).") from exc
        return cls(tokenizer, spec)

    def prepare(self, text: str) -> str:
        """The text exactly as it is handed to the Rust tokenizer."""
        if self.spec.strip:
            text = text.strip()
        return _SURROGATES.sub("\ufffd", text)

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text after truncation, special tokens included (what a batch row costs)."""
        encodings = self._counter.encode_batch([self.prepare(t) for t in texts], add_special_tokens=True)
        return np.array([len(e.ids) for e in encodings], dtype=np.int64)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize a batch; returns int64 `input_ids`, `attention_mask`, `token_type_ids` [batch, seq]."""
        encodings = self._tokenizer.encode_batch([self.prepare(t) for t in texts], add_special_tokens=True)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
