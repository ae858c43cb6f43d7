"""The ASGI app: TEI and OpenAI routes over one `Batcher`, with a cache, auth, limits and metrics.

`create_app(embedder, config)` builds it around a loaded `jobbert_onnx.runtime.Embedder` (or
anything with the same public methods, e.g. a slow fake in the tests). Handlers only validate,
answer cache hits and wait; inference happens on the batcher's single thread. Work that grows with
what a client sent (parsing a large body, tokenizing, normalizing and serializing many vectors)
runs on one preparation thread, so that the event loop, and `/health` with it, always answers.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import hmac
import itertools
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from jobbert_onnx.runtime import TextTooLongError, similarity, unit_rows
from jobbert_onnx.runtime.cache import EmbeddingCache
from jobbert_onnx.runtime.prepared import PreparedTexts

from .batcher import Batcher, Item, QueueFull, QueueTimeout, RequestTooLarge, ShuttingDown
from .config import ServerConfig
from .errors import ApiError, bad_request, text_too_long, too_large, unavailable
from .metrics import Metrics
from .openapi import openapi_document
from .schemas import ModelInfo, parse_embed, parse_openai, parse_similarity, parse_tokenize

log = logging.getLogger("jobbert_onnx.serve")

# Below these sizes a step runs on the event loop: a hop to the preparation thread costs more than
# the step (tokenizing 4,096 characters, even of a text tokenized whole, takes a few ms at most).
INLINE_CHARS = 4096  # characters of a request's texts
INLINE_BYTES = 64 * 1024  # bytes of a JSON body
INLINE_ROWS = 64  # vectors to normalize and serialize
# After preparing this many characters, hand freed memory back to the system: the tokenizer's
# temporary buffers for texts tokenized whole would otherwise stay in the allocator's arenas.
TRIM_CHARS = 1 << 20
_CLIENT_GONE = 499  # nginx's "client closed request": only ever seen in the metrics
# Request ids: a random prefix per process (so that replicas differ) and a counter.
_REQUEST_PREFIX = os.urandom(4).hex()
_REQUEST_NUMBERS = itertools.count(1)


class _ClientGone(Exception):
    """The client disconnected while its texts were queued."""


@dataclass
class Timings:
    """Milliseconds reported in TEI-style response headers."""

    start: float = field(default_factory=time.perf_counter)
    tokenization_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    characters: int = 0
    tokens: int = 0

    def headers(self) -> dict[str, str]:
        ms = lambda seconds: f"{seconds * 1000:.3f}"  # noqa: E731
        return {
            "x-total-time": ms(time.perf_counter() - self.start),
            "x-tokenization-time": ms(self.tokenization_s),
            "x-queue-time": ms(self.queue_s),
            "x-inference-time": ms(self.inference_s),
            "x-compute-characters": str(self.characters),
            "x-compute-tokens": str(self.tokens),
        }


@dataclass
class RequestTexts:
    """A request's texts, prepared: each distinct text tokenized once (`prepared`), the row of each
    input in it (`rows`), each distinct text's encoder key and each input's cache key."""

    prepared: PreparedTexts
    rows: list[int]
    text_keys: list[bytes]
    keys: list[bytes]


def _release_freed_memory() -> None:
    """Return the allocator's free memory to the system (glibc only; elsewhere nothing to do)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_LIBC = None
if os.name == "posix":
    try:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        _LIBC = None


class ServerState:
    """Everything the handlers share: the model, the batcher, the cache, the metrics and the phase."""

    def __init__(self, embedder: Any, config: ServerConfig) -> None:
        limits = config.limits
        manifest = embedder.manifest
        limits.check(manifest.tokenizer.max_seq_length)
        self.embedder = embedder
        self.config = config
        self.limits = limits
        self.artifact_id = embedder.artifact_id
        self.model = ModelInfo(
            name=config.served_model_name,
            heads={head: embedder.dimension(head) for head in embedder.heads},
            default_head=embedder.default_head,
            prompts=tuple(manifest.prompts),
            max_seq_length=manifest.tokenizer.max_seq_length,
        )
        self.metrics = Metrics()
        self.cache = EmbeddingCache(limits.cache_bytes, limits.cache_entries)
        self.batcher = Batcher(
            embedder,
            self.metrics,
            max_items=limits.max_batch_items,
            max_tokens=limits.max_batch_tokens,
            batch_wait_s=limits.batch_wait_ms / 1000,
            max_queued=limits.max_queue_items,
            queue_timeout_s=limits.queue_timeout_s,
            store=self._store,
            max_seq_length=manifest.tokenizer.max_seq_length,
        )
        # One thread: large requests are prepared one after another, and never take more than
        # one core from the model; small ones are prepared on the loop and never wait for it.
        self.preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobbert-prepare")
        self.draining = False
        self.metrics.watch(lambda: self.batcher.queued, lambda: (len(self.cache), self.cache.bytes), lambda: self.ready)

    @property
    def ready(self) -> bool:
        return self.batcher.ready.is_set() and not self.draining

    def _store(self, key: bytes, vector: np.ndarray, tokens: int) -> None:
        evicted = self.cache.evictions
        self.cache.put(key, vector, tokens)
        if self.cache.evictions > evicted:
            self.metrics.cache_evictions.inc(self.cache.evictions - evicted)

    async def off_loop(self, inline: bool, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)`: here when `inline` (small work), else on the preparation thread."""
        if inline:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.preparer, function, *args)

    def abort(self) -> None:
        """The shutdown timeout passed: answer every queued request 503 now and compute nothing more."""
        self.draining = True
        self.batcher.abort()

    def check_accepting(self) -> None:
        if self.draining:
            self.metrics.rejections.labels(reason="draining").inc()
            raise unavailable("the server is shutting down; retry on another replica.", "draining")
        if not self.batcher.ready.is_set():
            self.metrics.rejections.labels(reason="not_ready").inc()
            if self.batcher.failure is not None:
                raise unavailable(f"the model failed to warm up ({self.batcher.failure}).", "not_ready", 30)
            raise unavailable("the model is still warming up; retry shortly.", "not_ready")

    # -- the embedding path ------------------------------------------------------------------
    def prepare_distinct(self, texts: list[str], prompt_name: str | None = None) -> tuple[PreparedTexts, list[int]]:
        """Each distinct text tokenized once, and the row of each input among them. A text the runtime
        refuses is a 413 naming its place in the request."""
        distinct = list(dict.fromkeys(texts))
        try:
            prepared = self.embedder.prepare(distinct, prompt_name=prompt_name)
        except TextTooLongError as exc:
            raise text_too_long(texts.index(distinct[exc.index]), exc.detail) from None
        finally:
            if sum(map(len, distinct)) > TRIM_CHARS:
                _release_freed_memory()
        row_of = {text: row for row, text in enumerate(distinct)}
        return prepared, [row_of[text] for text in texts]

    def prepare(self, texts: list[str], heads: list[str], prompt_name: str | None) -> RequestTexts:
        """Tokenize each distinct text once and key every input (off the loop for large requests)."""
        prepared, rows = self.prepare_distinct(texts, prompt_name)
        by_head = {head: prepared.keys(self.artifact_id, head) for head in dict.fromkeys(heads)}
        keys = [by_head[head][row] for head, row in zip(heads, rows)]
        return RequestTexts(prepared, rows, prepared.keys(self.artifact_id), keys)

    async def embed(
        self, request: Request, pairs: list[tuple[str, str]], prompt_name: str | None, timings: Timings
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw float32 vectors [len(pairs), dim] and token counts for (text, head) pairs, in order.

        Cache hits are answered here; the rest are queued and awaited.
        """
        self.check_accepting()
        texts, heads = [text for text, _ in pairs], [head for _, head in pairs]
        started = time.perf_counter()
        inline = sum(map(len, texts)) <= INLINE_CHARS
        request_texts: RequestTexts = await self.off_loop(inline, self.prepare, texts, heads, prompt_name)
        timings.tokenization_s = time.perf_counter() - started
        prepared, rows = request_texts.prepared, request_texts.rows
        tokens = prepared.counts[rows]
        vectors: list[np.ndarray | None] = [None] * len(pairs)
        misses: dict[bytes, list[int]] = {}
        hits, missed = self.cache.hits, self.cache.misses
        for i, key in enumerate(request_texts.keys):
            if key in misses:
                misses[key].append(i)
                continue
            entry = self.cache.get(key)
            if entry is None:
                misses[key] = [i]
            else:
                vectors[i] = entry.vector
        self.metrics.cache_hits.inc(self.cache.hits - hits)  # the cache counts; off, it counts nothing
        self.metrics.cache_misses.inc(self.cache.misses - missed)
        if misses:
            items = [
                Item(key, request_texts.text_keys[rows[i[0]]], prepared, rows[i[0]], heads[i[0]])
                for key, i in misses.items()
            ]
            jobs = await self._wait(request, items)
            for job, indices in zip(jobs, misses.values()):
                for i in indices:
                    vectors[i] = job.vector
                timings.queue_s = max(timings.queue_s, job.queue_s)
                timings.inference_s = max(timings.inference_s, job.inference_s)
        timings.characters += sum(map(len, texts))
        timings.tokens += int(tokens.sum())
        return np.stack(vectors).astype(np.float32, copy=False), tokens

    async def _wait(self, request: Request, items: list[Item]) -> list:
        try:
            ticket, jobs = self.batcher.submit(items)
        except QueueFull as exc:
            self.metrics.rejections.labels(reason="queue_full").inc()
            raise ApiError(429, f"the server is overloaded: {exc}; retry later.", "queue_full", headers={"Retry-After": "1"})
        except RequestTooLarge as exc:
            self.metrics.rejections.labels(reason="request_too_large").inc()
            raise too_large(f"{exc}.", code="request_too_large") from None
        except ShuttingDown:
            raise unavailable("the server is shutting down; retry on another replica.", "draining") from None
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            timeout: float | None = self.limits.queue_timeout_s
            while not ticket.future.done():
                await asyncio.wait({ticket.future, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if ticket.future.done():
                    break
                if gone.done():
                    dropped = self.batcher.release(ticket, jobs)
                    self.metrics.dropped.labels(reason="client_gone").inc(dropped)
                    raise _ClientGone()
                dropped = self.batcher.expire(ticket, jobs)
                if dropped is not None:  # none of its texts started within the timeout: give up
                    self.metrics.dropped.labels(reason="queue_timeout").inc(dropped)
                    raise QueueTimeout()
                timeout = None  # it started: an admitted request runs whole
            error = ticket.future.exception()
            if error is not None:
                self.batcher.release(ticket, jobs)
                raise error
        except QueueTimeout:
            self.metrics.rejections.labels(reason="queue_timeout").inc()
            raise ApiError(
                503, f"the texts waited in the queue longer than --queue-timeout {self.limits.queue_timeout_s:g} s.",
                "queue_timeout", headers={"Retry-After": "1"},
            ) from None
        except ShuttingDown:
            raise unavailable(
                "the server shut down (--shutdown-timeout passed) before these texts ran; retry on another replica.",
                "shutting_down",
            ) from None
        finally:
            gone.cancel()
        return jobs


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else is received)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _normalized(vectors: np.ndarray) -> np.ndarray:
    """Unit rows, computed exactly as `Embedder.encode(normalize=True)` does (the same function)."""
    return unit_rows(np.asarray(vectors, dtype=np.float32))


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(content), status, headers, media_type="application/json")


def _dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise bad_request(f"malformed JSON: {exc}.", code="invalid_json") from None


async def _read_json(request: Request, state: ServerState) -> Any:
    """The JSON body, refused with 413 as soon as it passes the body limit (before reading it all);
    a large body is parsed off the event loop."""
    limit = state.limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request(f"invalid Content-Length {declared!r}.")
        if int(declared) > limit:
            raise too_large(f"the body has {declared} bytes; the limit is {limit} (--max-body-bytes).", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"the body passed {limit} bytes, the limit (--max-body-bytes).", code="body_too_large")
        chunks.append(chunk)
    if not size:
        raise bad_request("the request has no body; send a JSON object.", code="invalid_json")
    return await state.off_loop(size <= INLINE_BYTES, _parse_json, b"".join(chunks))


async def _vectors_response(state: ServerState, vectors: np.ndarray, normalize: bool,
                            shape: Callable[[np.ndarray], Any], timings: Timings) -> Response:
    """Normalize (if asked) and serialize `shape(vectors)`, off the loop for many rows."""

    def body() -> bytes:
        return _dumps(shape(_normalized(vectors) if normalize else vectors))

    content = await state.off_loop(len(vectors) <= INLINE_ROWS, body)
    return Response(content, 200, timings.headers(), media_type="application/json")


# -- routes ------------------------------------------------------------------------------------
Handler = Callable[[Request, ServerState], Awaitable[Response]]


async def embed_tei(request: Request, state: ServerState) -> Response:
    parsed = parse_embed(await _read_json(request, state), state.model, state.limits)
    timings = Timings()
    vectors, _ = await state.embed(request, [(t, parsed.head) for t in parsed.texts], parsed.prompt_name, timings)
    return await _vectors_response(state, vectors, parsed.normalize, lambda rows: rows, timings)


async def embed_openai(request: Request, state: ServerState) -> Response:
    body = await _read_json(request, state)
    parsed = parse_openai(body, state.model, state.limits)
    timings = Timings()
    vectors, tokens = await state.embed(request, [(t, parsed.head) for t in parsed.texts], parsed.prompt_name, timings)
    total = int(tokens.sum())
    model = body.get("model") or state.model.name

    def shape(rows: np.ndarray) -> dict:
        if parsed.base64:
            encoded: list = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in rows]
        else:
            encoded = list(rows)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    return await _vectors_response(state, vectors, parsed.normalize, shape, timings)


async def similarity_route(request: Request, state: ServerState) -> Response:
    parsed = parse_similarity(await _read_json(request, state), state.model, state.limits)
    timings = Timings()
    pairs = [(t, parsed.source_head) for t in parsed.source] + [(t, parsed.target_head) for t in parsed.target]
    vectors, _ = await state.embed(request, pairs, None, timings)

    def matrix(rows: np.ndarray) -> np.ndarray:
        return similarity(rows[: len(parsed.source)], rows[len(parsed.source) :]).astype(np.float32)

    return await _vectors_response(state, vectors, False, matrix, timings)


async def tokenize_route(request: Request, state: ServerState) -> Response:
    texts = parse_tokenize(await _read_json(request, state), state.limits)
    state.check_accepting()

    def tokenize() -> bytes:
        prepared, rows = state.prepare_distinct(texts)
        ids = [prepared.row_ids(row).tolist() for row in rows]
        return _dumps([{"ids": row, "count": len(row)} for row in ids])

    content = await state.off_loop(sum(map(len, texts)) <= INLINE_CHARS, tokenize)
    return Response(content, 200, media_type="application/json")


async def info_route(request: Request, state: ServerState) -> Response:
    embedder, limits, model = state.embedder, state.limits, state.model
    manifest = embedder.manifest
    return _json(
        {
            "model": model.name,
            "artifact": str(embedder.path),
            "sha256": state.artifact_id,
            "source": manifest.source,
            "precision": manifest.precision,
            "heads": model.heads,
            "default_head": model.default_head,
            "prompts": list(model.prompts),
            "max_seq_length": model.max_seq_length,
            "limits": limits.to_dict(),
            "ready": state.ready,
            # TEI's /info names, so that TEI clients can chunk their inputs
            "model_id": model.name,
            "model_dtype": manifest.precision,
            "max_input_length": model.max_seq_length,
            "max_client_batch_size": limits.max_inputs,
            "max_batch_tokens": limits.max_batch_tokens,
            "max_batch_requests": limits.max_batch_items,
            "auto_truncate": True,
        }
    )


async def models_route(request: Request, state: ServerState) -> Response:
    names = [state.model.name, *(f"{state.model.name}/{head}" for head in state.model.heads)]
    return _json({"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "jobbert-onnx"} for n in names]})


async def health_route(request: Request, state: ServerState) -> Response:
    return _json({"status": "ok"})


async def ready_route(request: Request, state: ServerState) -> Response:
    if state.ready:
        return _json({"status": "ready"})
    if state.draining:
        return _json({"status": "draining"}, 503)
    if state.batcher.failure is not None:
        return _json({"status": "failed", "error": str(state.batcher.failure)}, 503)
    return _json({"status": "loading"}, 503)


async def metrics_route(request: Request, state: ServerState) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi_route(request: Request, state: ServerState) -> Response:
    return _json(openapi_document(state.model, state.limits))


# (path, method, handler, OpenAI error shape, needs the API key)
ROUTES: list[tuple[str, str, Handler, bool, bool]] = [
    ("/embed", "POST", embed_tei, False, True),
    ("/v1/embeddings", "POST", embed_openai, True, True),
    ("/embeddings", "POST", embed_openai, True, True),
    ("/similarity", "POST", similarity_route, False, True),
    ("/tokenize", "POST", tokenize_route, False, True),
    ("/info", "GET", info_route, False, True),
    ("/v1/models", "GET", models_route, True, True),
    ("/health", "GET", health_route, False, False),
    ("/ready", "GET", ready_route, False, False),
    ("/metrics", "GET", metrics_route, False, False),
    # TEI's router: `POST /` is /embed for an embedding model (huggingface_hub's InferenceClient
    # posts there), `/invocations` too (SageMaker), and `GET /` and `/ping` are health checks.
    ("/", "POST", embed_tei, False, True),
    ("/invocations", "POST", embed_tei, False, True),
    ("/", "GET", health_route, False, False),
    ("/ping", "GET", health_route, False, False),
    ("/api-doc/openapi.json", "GET", openapi_route, False, False),
]


def _check_key(request: Request, key: str) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(
            401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'.", "invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _endpoint(state: ServerState, path: str, handler: Handler, openai: bool, needs_key: bool):
    """Wrap a handler with the request id, auth, the error body shape, timing headers and metrics."""
    metrics = state.metrics

    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        request_id = request.headers.get("x-request-id") or f"{_REQUEST_PREFIX}-{next(_REQUEST_NUMBERS)}"
        try:
            if needs_key and state.config.api_key:
                _check_key(request, state.config.api_key)
            response = await handler(request, state)
        except ApiError as error:
            if error.status == 413:
                metrics.rejections.labels(reason="too_large").inc()
            response = _json(error.body(openai), error.status, error.headers)
        except (_ClientGone, ClientDisconnect):
            response = Response(status_code=_CLIENT_GONE)
        except Exception:
            log.exception("request %s to %s failed", request_id, path)
            error = ApiError(500, f"internal error; it was logged with request id {request_id}.", "internal_error")
            response = _json(error.body(openai), 500)
        response.headers["x-request-id"] = request_id
        status = str(response.status_code)
        metrics.requests.labels(path, status).inc()
        metrics.latency.labels(path, status).observe(time.perf_counter() - start)
        return response

    return endpoint


def create_app(embedder: Any, config: ServerConfig | None = None) -> Starlette:
    """The server's ASGI app around a loaded `Embedder`. Its lifespan starts and stops the inference thread.

    `app.state.server` is the `ServerState` (tests and `run_server` reach the batcher and the
    draining flag through it).
    """
    state = ServerState(embedder, config or ServerConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette):
        state.batcher.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            state.draining = True
            # Queued jobs finish first; joining is a wait, not computation.
            await asyncio.to_thread(state.batcher.stop)
            state.preparer.shutdown(wait=False, cancel_futures=True)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        openai = request.url.path.startswith("/v1/")
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.", "not_found")
        return _json(error.body(openai), exc.status_code, dict(exc.headers or {}))

    routes = [Route(path, _endpoint(state, path, handler, openai, key), methods=[method]) for path, method, handler, openai, key in ROUTES]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.server = state
    return app
