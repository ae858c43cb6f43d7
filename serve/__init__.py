"""The embedding server (`jobbert-onnx serve`): TEI and OpenAI routes, dynamic batching, a cache.

Needs the [serve] extra (Starlette, uvicorn, prometheus_client, orjson). `create_app(embedder,
config)` builds the ASGI app; `run_server(app, host, port)` serves it with a drain on SIGTERM.
Importing this package alone pulls in none of them.
"""

from __future__ import annotations

from jobbert_onnx.lazy import lazy_exports

# Imported on first use, so that `jobbert_onnx.serve.cli` imports without the extra.
_HOMES = {"Limits": ".config", "ServerConfig": ".config", "create_app": ".app", "run_server": ".server"}
__all__ = sorted(_HOMES)

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
