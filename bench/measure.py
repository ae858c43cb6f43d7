"""Timing and cosine helpers shared by the benchmark scripts, and how they write their results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jobbert_onnx.runtime.files import write_atomically
from jobbert_onnx.runtime.vectors import cosine_rows

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




def invariance_context(titles: list[str], count: int = 100) -> tuple[list[str], list[str]]:
    """The batch-invariance probes (the first `count` titles) and the 31 longest titles that each
    probe joins, so a batch of 32 is padded around it."""
    return titles[:count], sorted(titles, key=len)[-31:]


def batch_invariance(artifact: Path, titles: list[str], count: int = 100) -> float:
    """Min cosine between a title embedded alone and the same title inside a batch of the 31
    longest titles (so the batch is padded around it)."""
    from jobbert_onnx.runtime import Embedder

    embedder = Embedder(artifact)
    probes, longest = invariance_context(titles, count)
    alone = embedder.encode(probes, batch_size=1)
    batched = np.concatenate([embedder.encode([*longest, t], batch_size=32)[-1:] for t in probes])
    return float(cosine_rows(alone, batched).min())


def write_results(folder: Path, name: str, result: dict, markdown: str) -> None:
    """`result` as `name`.json and its report as `name`.md in `folder`, each written whole or not at all."""
    write_atomically(folder / f"{name}.json", json.dumps(result, indent=2) + "\n")
    write_atomically(folder / f"{name}.md", markdown)
