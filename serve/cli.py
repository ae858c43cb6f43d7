"""`jobbert-onnx serve ARTIFACT ...`: the subcommand's flags and its run function.

Importing this module needs only the standard library, so that `jobbert-onnx --help` works
without the [serve] extra; `run` imports the server and says which extra to install.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from jobbert_onnx.runtime.errors import JobbertOnnxError

API_KEY_ENV = "JOBBERT_ONNX_API_KEY"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `serve` to the `jobbert-onnx` subcommands (its defaults come from `serve.config.Limits`)."""
    from .config import Connections, Limits, ServerConfig

    serve = subparsers.add_parser(
        "serve",
        help="serve an artifact over HTTP (TEI and OpenAI embedding routes)",
        description="Serve an artifact over HTTP: TEI's /embed, OpenAI's /v1/embeddings, /similarity, /tokenize, "
        "/info, /v1/models, /health, /ready and /metrics. Needs the [serve] extra.",
    )
    serve.add_argument("artifact", help="artifact folder (from `jobbert-onnx export`)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for all interfaces "
                                                           "(default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="0 to 65535; 0: any free port (default 8080)")
    serve.add_argument("--threads", type=int, metavar="N",
                       help="onnxruntime threads for the encoder (default one per physical core)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    serve.add_argument("--served-model-name", help="OpenAI's `model`: the name clients send (default the artifact "
                                                   "folder's name)")
    key = serve.add_mutually_exclusive_group()
    key.add_argument("--api-key", metavar="KEY",
                     help=f"require 'Authorization: Bearer KEY'; prefer --api-key-file or ${API_KEY_ENV}: a flag "
                          "shows in `ps`. Surrounding whitespace (a trailing newline) is stripped from every source; "
                          "a key that is empty, has whitespace inside or is not printable ASCII refuses to start "
                          f"(default ${API_KEY_ENV}, if set)")
    key.add_argument("--api-key-file", metavar="FILE", help="read the API key from this file")

    group = serve.add_argument_group("limits (all named in GET /info)")
    _add_flags(group, Limits)
    _add_flags(group, ServerConfig)
    conn = serve.add_argument_group("connections (what a client may hold before its request is read)")
    _add_flags(conn, Connections)
    conn.add_argument("--http", choices=["auto", "httptools", "h11"], default="auto",
                      help="HTTP parser: httptools (the fast one) when installed, else h11; the guards above apply "
                           "to both (default auto)")

    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="log level (default info)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request; it costs throughput (default off)")
    serve.set_defaults(run=run)
    return serve


def _add_flags(group: argparse._ArgumentGroup, settings: type) -> None:
    """One flag per flag-backed field of the dataclass `settings`: flag, default, help and type come
    from the field (`serve.config.flag_fields`), and the value lands under the field's name."""
    from .config import flag_fields

    for name, bound, default, text in flag_fields(settings):
        metavar = "SECONDS" if name.endswith(("_s", "_seconds")) else None
        group.add_argument(bound.flag, dest=name, type=int if bound.integer else float, default=default,
                           metavar=metavar, help=text)


def _settings(settings: type, args: argparse.Namespace) -> dict:
    """The values of `settings`' flag-backed fields from the parsed flags."""
    from .config import flag_fields

    return {name: getattr(args, name) for name, _, _, _ in flag_fields(settings)}


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file or $JOBBERT_ONNX_API_KEY, in that order; None: no auth.

    Surrounding whitespace (a file's or a variable's trailing newline) is stripped. A source that
    is given but empty (`--api-key "$UNSET"`, `JOBBERT_ONNX_API_KEY=`) raises instead of serving
    without authentication, and so does a key with whitespace inside or outside printable ASCII.
    """
    from .config import clean_api_key

    if args.api_key is not None:
        return clean_api_key(args.api_key, "--api-key")
    if args.api_key_file:
        path = Path(args.api_key_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise JobbertOnnxError(f"{path}: cannot read the API key file ({exc}).") from exc
        if not text.strip():
            raise JobbertOnnxError(f"{path}: the API key file is empty; the server would run without authentication.")
        return clean_api_key(text, f"--api-key-file {path}")
    if API_KEY_ENV in os.environ:
        return clean_api_key(os.environ[API_KEY_ENV], f"${API_KEY_ENV}")
    return None


def run(args: argparse.Namespace) -> None:
    """Load the artifact, then serve it until SIGTERM."""
    try:
        from .app import create_app
        from .server import run_server
    except ImportError as exc:
        raise JobbertOnnxError(
            f"`jobbert-onnx serve` needs the [serve] extra ({exc.name} is missing): pip install 'jobbert-onnx[serve]'."
        ) from exc
    from jobbert_onnx.runtime import Embedder

    from .config import Connections, Limits, ServerConfig, check_process_flags
    from .server import connection_cap

    # One computing pool: the tokenizer's own thread pool would compete with onnxruntime's.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = ServerConfig(
        limits=Limits(**_settings(Limits, args)),
        served_model_name=args.served_model_name or Path(args.artifact).resolve().name,
        api_key=api_key(args),
        connections=Connections(**_settings(Connections, args)),
        **_settings(ServerConfig, args),
    )
    # Every setting is checked before the model loads: a typo must not cost a model load first.
    check_process_flags(args.port, args.threads)
    config.check()
    config = replace(config, connections=replace(config.connections,
                                                 max_connections=connection_cap(config.connections.max_connections)))
    embedder = Embedder(args.artifact, device=args.device, threads=args.threads)
    app = create_app(embedder, config)  # checks the limits against the model
    run_server(app, args.host, args.port, log_level=args.log_level, access_log=args.access_log, http=args.http)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jobbert_onnx.serve ARTIFACT ...`: the same as `jobbert-onnx serve` (one error printer)."""
    from jobbert_onnx.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = ["--debug"] if "--debug" in argv else []
    return cli_main([*debug, "serve", *(a for a in argv if a != "--debug")])
