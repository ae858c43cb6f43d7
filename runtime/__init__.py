"""The lean runtime: embed texts with an exported artifact using onnxruntime, tokenizers and numpy.

Nothing here imports torch, transformers, sentence-transformers or onnx.
"""

from .embedder import Embedder, similarity
from .errors import ArtifactError, JobbertOnnxError, ProviderError, TextTooLongError, UnknownHeadError
from .manifest import Manifest
from .vectors import cosine_rows, unit_rows

__all__ = [
    "ArtifactError",
    "Embedder",
    "JobbertOnnxError",
    "Manifest",
    "ProviderError",
    "TextTooLongError",
    "UnknownHeadError",
    "cosine_rows",
    "similarity",
    "unit_rows",
]
