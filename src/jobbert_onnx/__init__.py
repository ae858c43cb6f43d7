"""jobbert-onnx: export sentence-transformers models to ONNX and embed texts without PyTorch.

Only the runtime is imported here, so `from jobbert_onnx import Embedder` works without the
export extras; the exporter lives in `jobbert_onnx.export`.
"""

from jobbert_onnx.runtime import Embedder, similarity

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__", "similarity"]
