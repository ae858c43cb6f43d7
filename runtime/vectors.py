"""Row-wise vector maths shared by the runtime, the exporter, the CLI and the benchmarks."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """`x`'s rows scaled to unit L2 norm, in `x`'s float dtype (at least float32); all-zero rows stay zero."""
    x = np.asarray(x)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of `a` with the same row of `b`, in float64.

    A pair where both rows are all zero counts as identical (1.0); one zero row against a non-zero
    one gives 0.0, so a broken output can never pass a parity check.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"cosine_rows needs two 2-D arrays of one shape, got {a.shape} and {b.shape}.")
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    return np.where(both_zero, 1.0, (unit_rows(a) * unit_rows(b)).sum(axis=1))
