"""Which ids a run has seen, to find repeated ones: `SeenIds`.

A repeated id is a bad row (the first row with the id is kept), so the local engine, and the Ray
engine's check before it starts, remember every id read so far. That set grows with the input, so
it is kept compact: 8 bytes per integer id (the id itself, exact) and 16 bytes per id of any other
type (a 128-bit BLAKE2b digest of it: two different ids collide with a probability of about
n² / 2^129, nil for any real n), in a few sorted numpy arrays of doubling sizes. Adding n ids costs
O(n log n) and a lookup O(log² n); 10 million integer ids take 80 MB.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa


class SeenIds:
    """The ids seen so far; `repeats(ids)` marks the ones seen before and adds the others."""

    def __init__(self) -> None:
        # Sorted, without repeats, each at least twice the size of the next: a small log-structured
        # merge, so that adding a batch never re-sorts everything seen before.
        self._levels: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def repeats(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """A boolean per id: True where the id was seen before (in an earlier call, or earlier in
        `ids`). Nulls are never repeats and are not remembered. Adds the new ids."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        marks = np.zeros(len(ids), dtype=bool)
        valid = np.flatnonzero(ids.is_valid().to_numpy(zero_copy_only=False)) if len(ids) else np.zeros(0, np.int64)
        if len(valid) == 0:
            return marks
        keys = _keys(ids.filter(ids.is_valid()))
        unique, first = np.unique(keys, return_index=True)
        repeated = np.ones(len(keys), dtype=bool)
        repeated[first] = False  # later rows with the key of an earlier row of this batch stay marked
        known = np.zeros(len(unique), dtype=bool)
        for level in self._levels:
            at = np.searchsorted(level, unique).clip(max=len(level) - 1)
            known |= level[at] == unique
        repeated[first[known]] = True
        marks[valid] = repeated
        self._add(unique[~known])
        return marks

    def _add(self, keys: np.ndarray) -> None:
        if len(keys) == 0:
            return
        self._levels.append(keys)  # np.unique sorted them
        while len(self._levels) > 1 and len(self._levels[-2]) <= 2 * len(self._levels[-1]):
            top = self._levels.pop()
            self._levels[-1] = np.sort(np.concatenate([self._levels[-1], top]), kind="mergesort")


def _keys(ids: pa.Array) -> np.ndarray:
    """One comparable numpy value per (non-null) id: integers as int64 (uint64 by their bits),
    anything else as a 16-byte digest of its UTF-8 text, bytes or repr."""
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if pa.types.is_integer(ids.type):
        if ids.type == pa.uint64():
            return ids.to_numpy(zero_copy_only=False).view(np.int64)
        return ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.array([hashlib.blake2b(_as_bytes(v), digest_size=16).digest() for v in ids.to_pylist()], dtype="S16")


def _as_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return value
    return repr(value).encode("utf-8", "surrogatepass")
