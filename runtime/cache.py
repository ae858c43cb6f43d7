"""One LRU cache of raw embeddings, for the server and the dataset engine: bounded by the memory it
keeps and by its number of entries, with hit, miss and eviction counters. numpy only.

Keys are the 32-byte digests of `PreparedTexts.keys(artifact_id, head)` (artifact, head and the
text's tokens, prompt included), so an entry's size does not depend on the text's length: memory is
bounded by what is kept, not by what was sent. Vectors are stored raw (a head's output before
normalization); callers normalize after a lookup, so normalization is no part of the key.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np

# What an entry costs beyond its key bytes and vector data: the OrderedDict slot, the key object,
# the value tuple and the ndarray header (285-350 bytes measured with tracemalloc on CPython 3.11,
# depending on how full the dict's table is; tests/test_cache.py checks that the accounted bytes
# cover what is really allocated).
ENTRY_OVERHEAD = 400
KEY_BYTES = 32  # sha256, as `PreparedTexts.keys` makes them


class CachedEmbedding(NamedTuple):
    vector: np.ndarray  # float32, unnormalized, owning its data
    tokens: int  # the text's token count (the server's `usage`)


class EmbeddingCache:
    """Least recently used first out, once either `max_bytes` or `max_entries` would be exceeded.
    A bound of 0 turns it off: nothing is kept, and lookups are not counted.

    Not thread-safe: the server touches it from the event loop only, a `TableEmbedder` from the
    thread that calls it.
    """

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, CachedEmbedding] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        """Whether `key` is cached; neither counted nor moved in the LRU order."""
        return key in self._entries

    def keys(self) -> list[bytes]:
        """Keys from least to most recently used."""
        return list(self._entries)

    @staticmethod
    def entry_bytes(key: bytes, vector: np.ndarray) -> int:
        return len(key) + vector.nbytes + ENTRY_OVERHEAD

    def capacity(self, dimension: int) -> int:
        """How many vectors of `dimension` float32 values fit within both bounds."""
        if not self.enabled:
            return 0
        return min(self.max_entries, self.max_bytes // (KEY_BYTES + 4 * dimension + ENTRY_OVERHEAD))

    def get(self, key: bytes) -> CachedEmbedding | None:
        """The entry for `key`, now the most recently used, or None (counted as a hit or a miss)."""
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: bytes, vector: np.ndarray, tokens: int = 0) -> None:
        """Store a copy of `vector` (so that no batch array is kept alive), evicting LRU entries."""
        cost = self.entry_bytes(key, vector)
        if not self.enabled or cost > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self.entry_bytes(key, old.vector)
        while self._entries and (self.bytes + cost > self.max_bytes or len(self._entries) >= self.max_entries):
            evicted_key, evicted = self._entries.popitem(last=False)
            self.bytes -= self.entry_bytes(evicted_key, evicted.vector)
            self.evictions += 1
        self._entries[key] = CachedEmbedding(np.array(vector, dtype=np.float32, copy=True), int(tokens))
        self.bytes += cost
