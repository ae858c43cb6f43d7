"""The int8 plans an export tries in turn, until validation clears the threshold with a margin.

Plan 0 quantizes every MatMul. If its worst probe misses `threshold + margin`, the MatMuls are
ranked by how much each one's quantization hurts the embedding (`sensitivity.py`), and the next
plans keep the 2, 4, 8 and 16 most harmful ones in fp32. The threshold is never lowered: when no
plan clears the margin, the most accurate one is kept if it passes the threshold, else the export
fails as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from .precision import Int8Options

FALLBACK_COUNTS = (2, 4, 8, 16)


def int8_plans(base: Int8Options, rank: Callable[[], Sequence[str]]) -> Iterator[Int8Options]:
    """`base`, then plans that keep more and more of the MatMuls `rank()` orders first in fp32.
    `rank` runs only if the caller asks for a second plan."""
    yield base
    ranked = list(rank())
    for count in FALLBACK_COUNTS:
        yield replace(base, fp32_matmuls=(*base.fp32_matmuls, *ranked[:count]))
        if count >= len(ranked):
            return


def sensitivity_texts(calibration: Sequence[str], count: int = 48) -> list[str]:
    """The texts the ranking scores: an even spread of the short calibration texts, where each
    matmul's error weighs most in the mean pooling, and the empty text, whose embedding is only
    its special tokens (int8 hurt it most on all-mpnet-base-v2)."""
    short = [text for text in calibration if len(text) <= 48]
    step = max(1, len(short) // count)
    return ["", *short[::step][:count]]


def describe(attempts: list[dict], threshold: float, margin: float) -> dict:
    """The manifest's record of the plans tried and the one kept (the last)."""
    return {"margin": margin, "target_min_cosine": round(threshold + margin, 6), "attempts": attempts,
            "chosen": len(attempts) - 1, "met_margin": bool(attempts) and attempts[-1]["min_cosine"] >= threshold + margin}
