"""The lean runtime: embed texts with an exported artifact using onnxruntime, tokenizers and numpy.

Nothing here imports torch, transformers, sentence-transformers or onnx. Importing this package
loads neither onnxruntime nor numpy: the errors and `Manifest` (stdlib only) are imported here,
the other names on first use, so that the CLI can check that onnxruntime runs on this CPU
(`jobbert_onnx.cpu_probe`) before anything loads it.
"""

from jobbert_onnx.lazy import lazy_exports

from .errors import ArtifactError, JobbertOnnxError, ProviderError, TextTooLongError, UnknownHeadError
from .manifest import Manifest

_HOMES = {"Embedder": ".embedder", "similarity": ".embedder", "cosine_rows": ".vectors", "unit_rows": ".vectors"}
_HERE = ["ArtifactError", "JobbertOnnxError", "Manifest", "ProviderError", "TextTooLongError", "UnknownHeadError"]

__all__ = sorted([*_HOMES, *_HERE])

__getattr__, __dir__ = lazy_exports(__name__, _HOMES, listed=_HERE)
