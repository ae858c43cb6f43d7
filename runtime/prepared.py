"""`PreparedTexts`: texts tokenized once, as the encoder will run them, in a compact form.

A text is prepared once (stripped, prompt prepended, lone surrogates repaired, cut where the cut
keeps the ids, tokenized and truncated) and then only its ids travel: `Embedder.pool` pads them into
batches, the server queues them, and the cache keys them. The ids of every text sit end to end in
one int32 array, so a million titles cost a few bytes per token rather than a Python list each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class PreparedTexts:
    """Token ids of `len(self)` texts. Text i's ids are `ids[offsets[i]:offsets[i + 1]]`.

    `skip[i]` is how many leading tokens pooling leaves out (the prompt's, when the model's Pooling
    says `include_prompt: false`); the encoder still sees them.
    """

    ids: np.ndarray  # int32 [total tokens]
    type_ids: np.ndarray  # int32 [total tokens]
    offsets: np.ndarray  # int64 [n + 1]
    skip: np.ndarray  # int32 [n]

    def __len__(self) -> int:
        return len(self.skip)

    @property
    def counts(self) -> np.ndarray:
        """Tokens per text, special tokens included: int64 [n]."""
        return np.diff(self.offsets)

    def row_ids(self, i: int) -> np.ndarray:
        """Text i's token ids."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def select(self, rows: Sequence[int] | np.ndarray) -> "PreparedTexts":
        """The texts at `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return empty()
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        spans = [slice(s, e) for s, e in zip(starts.tolist(), ends.tolist())]
        return PreparedTexts(
            ids=np.concatenate([self.ids[s] for s in spans]),
            type_ids=np.concatenate([self.type_ids[s] for s in spans]),
            offsets=np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64),
            skip=self.skip[rows],
        )

    @staticmethod
    def concat(parts: Iterable["PreparedTexts"]) -> "PreparedTexts":
        """One `PreparedTexts` holding every part's texts, in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty()
        shifts = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
        return PreparedTexts(
            ids=np.concatenate([p.ids for p in parts]),
            type_ids=np.concatenate([p.type_ids for p in parts]),
            offsets=np.concatenate([[0]] + [p.offsets[1:] + shift for p, shift in zip(parts, shifts)]).astype(np.int64),
            skip=np.concatenate([p.skip for p in parts]),
        )

    def padded(self, pad_token_id: int) -> dict[str, np.ndarray]:
        """The encoder's int64 inputs [n, longest], right-padded, and the pooling mask, which also
        masks each text's `skip` leading tokens."""
        counts = self.counts
        width = int(counts.max(initial=0))
        columns = np.arange(width)
        mask = (columns[None, :] < counts[:, None]).astype(np.int64)
        ids = np.full((len(self), width), pad_token_id, dtype=np.int64)
        types = np.zeros((len(self), width), dtype=np.int64)
        ids[mask.astype(bool)] = self.ids  # row-major: each row's ids in order, then the next row's
        types[mask.astype(bool)] = self.type_ids
        pooling = mask if not self.skip.any() else mask * (columns[None, :] >= self.skip[:, None])
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "pooling_mask": pooling}

    def keys(self, *context: str) -> list[bytes]:
        """A 32-byte key per text: sha256 of `context` (e.g. the artifact id and the head), the skip,
        the type ids and the ids. Equal keys mean equal embeddings, whatever the raw texts were (a
        prompt named "" and no prompt differ exactly when their tokens do); hashing keeps a key's size
        independent of the text's."""
        prefix = hashlib.sha256()
        for part in context:
            prefix.update(part.encode("utf-8", "surrogatepass"))
            prefix.update(b"\0")
        keys = []
        for i in range(len(self)):
            digest = prefix.copy()
            span = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
            digest.update(int(self.skip[i]).to_bytes(4, "little"))
            digest.update(self.type_ids[span].tobytes())
            digest.update(b"\0")
            digest.update(self.ids[span].tobytes())
            keys.append(digest.digest())
        return keys


def empty() -> PreparedTexts:
    """No texts."""
    none = np.zeros(0, dtype=np.int32)
    return PreparedTexts(ids=none, type_ids=none, offsets=np.zeros(1, dtype=np.int64), skip=none)


def from_rows(ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]], skip: int) -> PreparedTexts:
    """Pack per-text id lists (from `tokenizers` encodings) into a `PreparedTexts`."""
    counts = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    flat = lambda rows: np.fromiter((t for row in rows for t in row), dtype=np.int32, count=int(counts.sum()))  # noqa: E731
    return PreparedTexts(
        ids=flat(ids),
        type_ids=flat(type_ids),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        skip=np.full(len(ids), skip, dtype=np.int32),
    )
