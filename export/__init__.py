"""The exporter: a sentence-transformers checkpoint -> an artifact folder of ONNX graphs.

Needs the `[export]` extra (torch, transformers, sentence-transformers, onnx).
"""

from .checkpoint import CheckpointError, CheckpointSpec, HeadSpec, read_checkpoint
from .pipeline import ExportConfig, export_model
from .precision import DEFAULT_MIN_COSINE, PRECISIONS, Fp16Options, Int8Options
from .source import SourceError
from .validation import ValidationError

__all__ = [
    "CheckpointError", "CheckpointSpec", "DEFAULT_MIN_COSINE", "ExportConfig", "Fp16Options", "HeadSpec",
    "Int8Options", "PRECISIONS", "SourceError", "ValidationError", "export_model", "read_checkpoint",
]
