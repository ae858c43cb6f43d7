"""The embedding server (`jobbert-onnx serve`): TEI and OpenAI routes, dynamic batching, a cache.

Needs the [serve] extra (Starlette, uvicorn, prometheus_client, orjson). `create_app(embedder,
config)` builds the ASGI app; `run_server(app, host, port)` serves it with a drain on SIGTERM.
Importing this package alone pulls in none of them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use, so that `jobbert_onnx.serve.cli` imports without the extra.
_HOMES = {"Limits": ".config", "ServerConfig": ".config", "create_app": ".app", "run_server": ".server"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
