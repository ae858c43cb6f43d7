"""sentence-transformers on PyTorch, the reference every test compares against."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from jobbert_onnx.runtime.vectors import cosine_rows  # noqa: F401  (re-exported: the tests' one cosine)


@lru_cache(maxsize=None)
def st_model(model_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def st_embeddings(model_dir: Path, texts: list[str], head: str = "default") -> np.ndarray:
    """The seed recipe's numbers: stripped texts, batches of 8, route `head` (none for `default`)."""
    kwargs = {} if head == "default" else {"task": head}
    stripped = [t.strip() for t in texts]
    return st_model(Path(model_dir)).encode(stripped, batch_size=8, convert_to_numpy=True, **kwargs)
