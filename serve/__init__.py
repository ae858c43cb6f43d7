"""The embedding server (`jobbert-onnx serve`): TEI and OpenAI routes, dynamic batching, a cache.

Needs the [serve] extra (Starlette, uvicorn, prometheus_client, orjson). `create_app(embedder,
config)` builds the ASGI app; `run_server(app, host, port)` serves it with a drain on SIGTERM.
Importing this package alone pulls in none of them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Limits", "ServerConfig", "create_app", "run_server"]


def __getattr__(name: str) -> Any:  # lazy, so that `jobbert_onnx.serve.cli` imports without the extra
    if name in ("Limits", "ServerConfig"):
        from . import config

        return getattr(config, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "run_server":
        from .server import run_server

        return run_server
    raise AttributeError(f"module 'jobbert_onnx.serve' has no attribute {name!r}")
