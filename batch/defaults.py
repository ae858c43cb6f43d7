"""The dataset command's choices, defaults and numeric limits, importable without pyarrow (the CLI lists them)."""

from __future__ import annotations

import math
from typing import Any

ENGINES = ("local", "ray")
INPUT_FORMATS = ("parquet", "csv", "json")
BAD_ROW_POLICIES = ("fail", "skip")
DEFAULT_BATCH_ROWS = 10_000  # rows per output file and per batch: what a resumed run redoes at most
DEFAULT_CACHE_MB = 128  # embeddings of recent texts kept across batches
DEFAULT_MAX_ROW_MB = 1  # CSV and JSON read block: the longest row

# name: (integer?, lowest, highest). The highest values are far above any useful setting; they keep
# what is derived from them (a shard held in memory, the cache's matrix, pyarrow's int32 block size)
# from overflowing or asking for absurd memory before anything is read.
LIMITS: dict[str, tuple[bool, float, float]] = {
    "workers": (True, 1, 4096),
    "threads": (True, 1, 4096),
    "batch_rows": (True, 1, 100_000_000),
    "batch_size": (True, 1, 1_000_000),
    "cache_mb": (False, 0, 65_536),
    "max_row_mb": (False, 0.001, 256),
}


def check_numbers(values: dict[str, Any], flags: bool = False) -> None:
    """Refuse a numeric setting of `embed_dataset` that is not a finite number in its range.

    Raises ValueError naming the setting (as the `--flag` when `flags`) and the value; None (a
    setting left to its default, like `threads`) passes.
    """
    for name, value in values.items():
        if value is None or name not in LIMITS:
            continue
        integer, low, high = LIMITS[name]
        shown = f"--{name.replace('_', '-')}" if flags else name
        if integer:
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
            kind = f"an integer from {low:,} to {high:,}"
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and low <= value <= high)
            kind = f"a number from {low:g} to {high:,}"
        if not ok:
            raise ValueError(f"{shown}={value!r}: must be {kind}.")
