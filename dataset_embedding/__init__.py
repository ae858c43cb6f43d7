"""Embed datasets: Parquet, CSV or JSON-lines rows in, a Parquet dataset of ids and embeddings out.

Needs the `[datasets]` extra (pyarrow); the Ray engine needs `[ray]` (ray[data]).

- `embed_dataset`: the whole job, on the local engine (streaming, resumable) or on Ray Data.
- `DatasetSettings`: its settings, one frozen dataclass (the `embed-dataset` flags come from it).
- `TableEmbedder`: the engine-neutral piece both engines use: an Arrow table of texts in, a
  table of ids and embeddings out.

Names are imported on first use, so that `jobbert-onnx --help` works without pyarrow.
"""

from jobbert_onnx.lazy import lazy_exports

# InputError is the one error of unreadable input, `embed --input`'s too: its home is outside this package.
_HOMES = {"embed_dataset": ".api", "DatasetSettings": ".defaults", "OutputFolderError": ".output",
          "BadRowError": ".table", "InputError": "jobbert_onnx.embed_files", "TableEmbedder": ".table",
          "artifact_sha256": ".table"}
__all__ = sorted(_HOMES)

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
