"""Embed datasets: Parquet, CSV or JSON-lines rows in, a Parquet dataset of ids and embeddings out.

Needs the `[batch]` extra (pyarrow); the Ray engine needs `[ray]` (ray[data]).

- `embed_dataset`: the whole job, on the local engine (streaming, resumable) or on Ray Data.
- `TableEmbedder`: the engine-neutral piece both engines use: an Arrow table of texts in, a
  table of ids and embeddings out.

Names are imported on first use, so that `jobbert-onnx --help` works without pyarrow.
"""

from importlib import import_module
from typing import Any

_HOMES = {"embed_dataset": ".api", "OutputFolderError": ".output", "BadRowError": ".table",
          "InputError": ".table", "TableEmbedder": ".table", "artifact_sha256": ".table"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
