"""Helpers for the server tests: an `Embedder` wrapper that records, slows, gates or fails its batches,
an in-process client, and a real server process on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator

import httpx
import numpy as np

from jobbert_onnx.runtime import Embedder
from jobbert_onnx.serve import Limits, ServerConfig, create_app

REPO = Path(__file__).resolve().parents[1]


class FakeEmbedder:
    """Delegates to a real `Embedder`; records every batch that `pool` runs after the warm-up, as the
    texts that were prepared into it.

    delay: seconds each batch sleeps; gate: batches wait for this event (the warm-up too, when
    `gate_warm_up`); fail_on: a text that makes its batch raise.
    """

    def __init__(
        self,
        inner: Embedder,
        delay: float = 0.0,
        gate: threading.Event | None = None,
        gate_warm_up: bool = False,
        fail_on: str | None = None,
    ) -> None:
        self.inner = inner
        self.delay = delay
        self.gate = gate
        self.gate_warm_up = gate_warm_up
        self.fail_on = fail_on
        self.batches: list[list[str]] = []  # texts of every batch after the warm-up
        self.batch_tokens: list[list[int]] = []
        self.warm_up_tokens: list[int] = []  # token counts of the warm-up batch
        self._warm = False
        self._texts: dict[tuple[bytes, int], str] = {}  # (ids, skip) -> the text prepared into them
        self.running = threading.Event()  # set while a batch is inside pool

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def prepare(self, texts, prompt_name=None, prompt=None):
        prepared = self.inner.prepare(texts, prompt_name=prompt_name, prompt=prompt)
        for i, text in enumerate(texts):
            self._texts[(prepared.row_ids(i).tobytes(), int(prepared.skip[i]))] = text
        return prepared

    def pool(self, prepared, batch_size=32, show_progress=False):
        warm_up = not self._warm
        self._warm = True
        texts = [self._texts[(prepared.row_ids(i).tobytes(), int(prepared.skip[i]))] for i in range(len(prepared))]
        if self.gate is not None and (self.gate_warm_up or not warm_up):
            self.running.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if not warm_up:
            self.batches.append(texts)
            self.batch_tokens.append([int(n) for n in prepared.counts])
        else:
            self.warm_up_tokens = [int(n) for n in prepared.counts]
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"boom: {self.fail_on!r} broke the batch")
        return self.inner.pool(prepared, batch_size=batch_size)

    @property
    def computed(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


@asynccontextmanager
async def serving(embedder, api_key: str | None = None, **limits) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    """An app around `embedder`, started (lifespan) and warmed up, with an in-process httpx client."""
    app = create_app(embedder, ServerConfig(limits=Limits(**limits), served_model_name="jobbert", api_key=api_key))
    state = app.state.server
    async with app.router.lifespan_context(app):
        await asyncio.to_thread(state.batcher.ready.wait, 30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield client, state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(args: list[str], env: dict[str, str] | None = None, ready_timeout: float = 60) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `python ARGS` (a server on loopback) and wait for its /ready; yields (process, base URL)."""
    port = free_port()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, *args, "--port", str(port)], cwd=REPO, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not become ready in time")
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def slow_server_main() -> None:
    """`python -m tests.serve_fakes ARTIFACT DELAY --port N`: the toy artifact behind a slow embedder."""
    import argparse

    from jobbert_onnx.serve import run_server

    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("delay", type=float)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--drain-seconds", type=float, default=1.0)
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    parser.add_argument("--queue-timeout", type=float, default=Limits().queue_timeout_s)
    parser.add_argument("--max-batch-items", type=int, default=Limits().max_batch_items)
    args = parser.parse_args()
    embedder = FakeEmbedder(Embedder(args.artifact), delay=args.delay)
    limits = Limits(queue_timeout_s=args.queue_timeout, max_batch_items=args.max_batch_items, cache_mb=0)
    app = create_app(embedder, ServerConfig(limits=limits, served_model_name="jobbert", drain_seconds=args.drain_seconds,
                                            shutdown_timeout_s=args.shutdown_timeout))
    run_server(app, "127.0.0.1", args.port, log_level="info")


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


if __name__ == "__main__":
    slow_server_main()
