"""jobbert-onnx: export sentence-transformers models to ONNX and embed texts without PyTorch.

Only the runtime is exported here, so `from jobbert_onnx import Embedder` works without the
export extras; the exporter lives in `jobbert_onnx.export`. `Embedder` and `similarity` are
imported on first use: importing the package loads no onnxruntime (see `jobbert_onnx.cpu_probe`).
"""

from jobbert_onnx.lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__", "similarity"]

__getattr__, __dir__ = lazy_exports(__name__, {"Embedder": ".runtime", "similarity": ".runtime"},
                                    listed=["__version__"])
