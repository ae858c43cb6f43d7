"""Run the app with uvicorn, draining on SIGTERM.

SIGTERM (or the first Ctrl-C): `/ready` answers 503 at once and new work gets 503 `draining`;
after `drain_seconds` (time for a load balancer to notice) the socket closes, in-flight requests
get up to `shutdown_timeout_s` to finish, queued texts are run, and the process exits 0.
A second signal exits at once. If the model fails its warm-up, the server stops with an error.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from jobbert_onnx.runtime.errors import JobbertOnnxError

log = logging.getLogger("jobbert_onnx.serve")


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, drain_seconds: float) -> None:
        super().__init__(config)
        self._state = app.state.server
        self._drain_seconds = drain_seconds
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

    async def on_tick(self, counter: int) -> bool:
        if self._state.batcher.failure is not None:  # the model cannot run: let a supervisor restart us
            return True
        return await super().on_tick(counter)


def run_server(app: Starlette, host: str, port: int, log_level: str = "info", access_log: bool = False) -> None:
    """Serve `app` (from `create_app`) on host:port until SIGTERM or SIGINT; returns after a clean drain."""
    config = app.state.server.config
    if not logging.getLogger().handlers:  # the server's own messages (drain, warm-up, 500s) beside uvicorn's
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=config.shutdown_timeout_s,
        lifespan="on",
    )
    server = _DrainingServer(uvicorn_config, app, config.drain_seconds)
    server.run()
    failure = app.state.server.batcher.failure
    if failure is not None:
        raise JobbertOnnxError(f"the model failed to warm up, so the server stopped: {failure}") from failure
