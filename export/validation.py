"""Export-time validation: the exported artifact against sentence-transformers on the probe set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobbert_onnx.runtime.errors import JobbertOnnxError
from jobbert_onnx.runtime.vectors import cosine_rows


class ValidationError(JobbertOnnxError):
    """The exported graphs do not reproduce sentence-transformers within the threshold."""


@dataclass
class HeadParity:
    min_cosine: float
    mean_cosine: float
    max_abs_error: float

    def to_dict(self) -> dict[str, float]:
        return {"min_cosine": self.min_cosine, "mean_cosine": self.mean_cosine, "max_abs_error": self.max_abs_error}


def reference_embeddings(model_dir: Path, texts: list[str], heads: list[str], routed: bool) -> dict[str, np.ndarray]:
    """Embeddings from sentence-transformers on PyTorch, one array per head.

    Call this before `torch.onnx.export` touches any model in the process: we saw reference
    outputs drift after an export. The texts are stripped first, as sentence-transformers
    before 6.0 did and as the runtime does; 6.x passes them to the tokenizer as they are.
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    stripped = [text.strip() for text in texts]
    out = {}
    for head in heads:
        kwargs = {"task": head} if routed else {}
        out[head] = model.encode(stripped, batch_size=8, convert_to_numpy=True, **kwargs).astype(np.float32)
    return out


def compare(reference: np.ndarray, candidate: np.ndarray) -> HeadParity:
    """Row-wise cosine and absolute error between two (n, dim) arrays."""
    cosine = cosine_rows(reference, candidate)
    error = np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max()
    return HeadParity(float(cosine.min()), float(cosine.mean()), float(error))


def validate_artifact(folder: Path, texts: list[str], reference: dict[str, np.ndarray]) -> dict[str, HeadParity]:
    """Run the artifact through the runtime and compare every head with its reference."""
    from jobbert_onnx.runtime import Embedder

    embedder = Embedder(folder)
    return {head: compare(ref, embedder.encode(texts, head=head, batch_size=8)) for head, ref in reference.items()}


def check_thresholds(results: dict[str, HeadParity], min_cosine: float, precision: str) -> None:
    """Raise `ValidationError` naming every head below `min_cosine`."""
    failed = {head: r for head, r in results.items() if not r.min_cosine >= min_cosine}
    if failed:
        detail = "; ".join(f"head {h!r} min cosine {r.min_cosine:.6f}" for h, r in failed.items())
        raise ValidationError(
            f"{precision} export does not match sentence-transformers: {detail} (threshold {min_cosine}). "
            "No artifact was written. To accept it, pass --min-cosine"
            + ("; to calibrate int8 on your own texts, --calibration FILE." if precision == "int8" else ".")
        )
