"""The exporter: a sentence-transformers checkpoint -> an artifact folder of ONNX graphs.

Needs the `[export]` extra (torch, transformers, sentence-transformers, onnx). Importing this
package loads nothing: each name below is imported on first use, so that the CLI can read
`jobbert_onnx.export.defaults` without the exporter, and torch loads only when an export runs.
"""

from jobbert_onnx.lazy import lazy_exports

_HOMES = {
    "CheckpointError": ".modules.base", "CheckpointSpec": ".checkpoint", "HeadConfig": ".modules.head",
    "read_checkpoint": ".checkpoint",
    "DEFAULT_MIN_COSINE": ".defaults", "PRECISIONS": ".defaults",
    "ExportConfig": ".pipeline", "export_model": ".pipeline",
    "Fp16Options": ".precision", "Int8Options": ".precision",
    "SourceError": ".source",
    "ValidationError": ".validation",
}

__all__ = sorted(_HOMES)

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
