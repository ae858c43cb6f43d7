"""Timing and cosine helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

Encode = Callable[[list[str], int], object]


def rate(encode: Encode, texts: list[str], batch: int, repeats: int = 3) -> float:
    """Median texts/s of `encode(texts, batch)` over `repeats` runs, after a warm-up run on the
    first max(batch, 32) texts (so the batch's shapes are seen once before timing)."""
    encode(texts[: max(batch, 32)], batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts, batch)
        rates.append(len(texts) / (time.perf_counter() - start))
    return float(np.median(rates))


def p50_ms(encode: Encode, texts: list[str], count: int = 100) -> float:
    """Median milliseconds of `encode([text], 1)`, one text at a time, over the first `count` texts."""
    times = []
    for text in texts[:count]:
        start = time.perf_counter()
        encode([text], 1)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, dim) arrays, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
