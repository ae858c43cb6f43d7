"""Run the app with uvicorn, draining on SIGTERM.

SIGTERM (or the first Ctrl-C): `/ready` answers 503 at once and new work gets 503 `draining`;
after `drain_seconds` (time for a load balancer to notice) the socket closes, in-flight requests
get up to `shutdown_timeout_s` to finish; texts still queued then are not run, their requests get
a JSON 503 (`shutting_down`), and the process exits 0.
A second signal exits at once. If the model fails its warm-up, the server stops with an error.

Connections go through `serve.protocol`'s guarded parser: a cap on open connections (checked
against the file-descriptor limit here, at start-up), on header bytes, and timeouts for headers
and bodies, which uvicorn does not have with httptools.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from dataclasses import replace
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from jobbert_onnx.runtime.errors import JobbertOnnxError

from .protocol import guarded_protocol

log = logging.getLogger("jobbert_onnx.serve")

DEFAULT_MAX_CONNECTIONS = 1024
# After the shutdown timeout, how long the requests whose texts were failed get to send their 503
# before uvicorn cancels what is left.
ABORT_GRACE_S = 2.0
# File descriptors kept for everything but client connections: the listening socket, the event
# loop's own, standard streams, logs, and a connection accepted over the cap before it is closed.
RESERVED_FDS = 64


def connection_cap(requested: int | None) -> int:
    """The connection limit to enforce: `requested` (None: the default), checked against RLIMIT_NOFILE.

    A soft limit below what is needed is raised toward the hard limit (unprivileged, this process
    only). If that is not enough, an explicit --max-connections raises ValueError; the default
    shrinks to fit. Past the limit, accept() fails and every new client would get a reset.
    """
    wanted = DEFAULT_MAX_CONNECTIONS if requested is None else requested
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_NOFILE to check
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    needed = wanted + RESERVED_FDS
    if soft != infinite and soft < needed:
        raised = needed if hard == infinite else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    room = wanted if soft == infinite else soft - RESERVED_FDS
    if room < 1:
        raise ValueError(f"the open-file limit (ulimit -n) is {soft}: it leaves no file descriptors for "
                         f"connections (the server keeps {RESERVED_FDS}); raise it.")
    if requested is None:
        return min(wanted, room)
    if requested > room:
        raise ValueError(
            f"--max-connections {requested} needs {needed} open files, but the limit (ulimit -n) is {soft} "
            f"(hard limit {'unlimited' if hard == infinite else hard}); use --max-connections {room} or less, "
            "or raise ulimit -n."
        )
    return requested


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, drain_seconds: float, shutdown_timeout: float) -> None:
        super().__init__(config)
        self._state = app.state.server
        self._drain_seconds = drain_seconds
        self._shutdown_timeout = shutdown_timeout
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        self._state.draining = True
        log.info("received %s: draining (ready now answers 503)", signal.Signals(sig).name)
        if self._drain_seconds > 0:
            timer = threading.Timer(self._drain_seconds, lambda: setattr(self, "should_exit", True))
            timer.daemon = True
            timer.start()
        else:
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn gives in-flight requests `timeout_graceful_shutdown` and then cancels them (a plain
        # 500 and a traceback) while the inference thread would go on with every queued text. At
        # the shutdown timeout, queued texts are failed instead: their requests get the JSON 503
        # within the grace that follows, and no further batch starts.
        abort = asyncio.get_running_loop().call_later(self._shutdown_timeout, self._state.abort)
        try:
            await super().shutdown(sockets)
        finally:
            abort.cancel()

    async def on_tick(self, counter: int) -> bool:
        if self._state.batcher.failure is not None:  # the model cannot run: let a supervisor restart us
            return True
        return await super().on_tick(counter)


def run_server(
    app: Starlette, host: str, port: int, log_level: str = "info", access_log: bool = False, http: str = "auto"
) -> None:
    """Serve `app` (from `create_app`) on host:port until SIGTERM or SIGINT; returns after a clean drain.

    http: "auto" (httptools when installed, else h11), "httptools" or "h11"; guarded either way.
    """
    config = app.state.server.config
    config.check()
    connections = replace(config.connections, max_connections=connection_cap(config.connections.max_connections))
    if not logging.getLogger().handlers:  # the server's own messages (drain, warm-up, 500s) beside uvicorn's
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=config.shutdown_timeout_s + ABORT_GRACE_S,
        lifespan="on",
        http=guarded_protocol(connections, http),
        # h11 has its own cap on an incomplete request head; ours (431) acts first.
        h11_max_incomplete_event_size=2 * connections.max_header_bytes,
    )
    server = _DrainingServer(uvicorn_config, app, config.drain_seconds, config.shutdown_timeout_s)
    server.run()
    failure = app.state.server.batcher.failure
    if failure is not None:
        raise JobbertOnnxError(f"the model failed to warm up, so the server stopped: {failure}") from failure
