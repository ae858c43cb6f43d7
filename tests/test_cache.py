"""The runtime's embedding cache (the server's and the dataset engine's): LRU order, its two bounds,
its counters, and that the bytes it accounts for are the bytes it really holds."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc

import numpy as np

from jobbert_onnx.runtime.cache import ENTRY_OVERHEAD, EmbeddingCache

DIM = 1024


def key(text: str, head: str = "anchor") -> bytes:
    """A 32-byte key, as `PreparedTexts.keys` makes them (tests/test_prepared.py checks those)."""
    return hashlib.sha256(f"{head}\0{text}".encode()).digest()


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def test_lru_order_and_the_byte_bound():
    cost = EmbeddingCache.entry_bytes(key("x"), vector(0))
    cache = EmbeddingCache(max_bytes=3 * cost, max_entries=100)
    for i, text in enumerate(["a", "b", "c"]):
        cache.put(key(text), vector(i), tokens=i + 2)
    assert cache.get(key("a")).tokens == 2  # "a" becomes the most recently used
    cache.put(key("d"), vector(3), tokens=5)  # evicts "b", the least recently used
    assert cache.keys() == [key("c"), key("a"), key("d")]
    assert cache.get(key("b")) is None
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 1)
    assert cache.bytes == 3 * cost <= cache.max_bytes
    np.testing.assert_array_equal(cache.get(key("d")).vector, vector(3))


def test_the_entry_bound_and_overwrites():
    cache = EmbeddingCache(max_bytes=10**9, max_entries=2)
    for text in "abc":
        cache.put(key(text), vector(0), tokens=1)
    assert cache.keys() == [key("b"), key("c")] and cache.evictions == 1
    cache.put(key("c"), vector(1), tokens=7)  # an overwrite is not an eviction and keeps the byte count right
    assert len(cache) == 2 and cache.evictions == 1
    assert cache.bytes == 2 * EmbeddingCache.entry_bytes(key("a"), vector(0))
    assert cache.get(key("c")).tokens == 7


def test_zero_turns_it_off_and_an_oversized_vector_is_not_kept():
    off = EmbeddingCache(max_bytes=0, max_entries=100)
    off.put(key("a"), vector(0), 1)
    assert len(off) == 0 and off.get(key("a")) is None and off.misses == 0
    assert off.capacity(DIM) == 0
    small = EmbeddingCache(max_bytes=100, max_entries=100)
    small.put(key("a"), vector(0), 1)
    assert len(small) == 0 and small.bytes == 0


def test_capacity_is_what_fits_within_both_bounds():
    cost = EmbeddingCache.entry_bytes(key("x"), vector(0))
    by_bytes = EmbeddingCache(max_bytes=5 * cost + cost - 1, max_entries=100)
    assert by_bytes.capacity(DIM) == 5
    for i in range(20):
        by_bytes.put(key(str(i)), vector(i))
    assert len(by_bytes) == 5
    by_entries = EmbeddingCache(max_bytes=10**9, max_entries=3)
    assert by_entries.capacity(DIM) == 3


def test_membership_is_neither_counted_nor_reordered():
    cache = EmbeddingCache(max_bytes=10**9, max_entries=2)
    cache.put(key("a"), vector(0))
    cache.put(key("b"), vector(1))
    assert key("a") in cache and key("z") not in cache
    assert (cache.hits, cache.misses) == (0, 0)
    cache.put(key("c"), vector(2))  # "a" is still the least recently used
    assert cache.keys() == [key("b"), key("c")]


def test_entries_own_their_data():
    """A vector that is a row of a batch must not keep the whole batch alive."""
    batch = np.ones((64, DIM), dtype=np.float32)
    cache = EmbeddingCache(max_bytes=10**9, max_entries=10)
    cache.put(key("a"), batch[3], 1)
    stored = cache.get(key("a")).vector
    assert stored.base is None and stored.flags.owndata
    batch[3] = 0
    assert stored.sum() == DIM


def test_accounted_bytes_cover_the_memory_really_held():
    """Filled to its bound, the cache holds no more memory than it accounts for (what is kept,
    not what was sent: the texts here are 10,000 characters, the keys 32 bytes)."""
    cost = EmbeddingCache.entry_bytes(key("x"), vector(0))
    cache = EmbeddingCache(max_bytes=500 * cost, max_entries=10**6)
    vectors = [vector(i) for i in range(8)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(2000):
            cache.put(key(f"{i} " + "x" * 10_000), vectors[i % 8], tokens=64)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(cache) == 500 and cache.bytes <= cache.max_bytes
    assert held <= cache.bytes, f"the cache holds {held} bytes but accounts for {cache.bytes}"
    assert held >= 500 * DIM * 4  # the vectors themselves are really there
    print(f"cache: {held / len(cache):.0f} bytes held per entry, {cost} accounted (overhead {ENTRY_OVERHEAD})")
