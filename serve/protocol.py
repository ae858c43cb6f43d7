"""uvicorn's HTTP protocols with the guards that uvicorn lacks before a request reaches the app.

uvicorn with httptools bounds neither the size of a request's headers (three clients sending
300 MB of headers each took the server from 409 MB to 1.34 GB) nor the time a client may take
to send them or its body, and it accepts connections until the process runs out of file
descriptors (then every new client gets a reset, and idle connections never go away). Its own
`limit_concurrency` only acts once headers are complete. `guarded_protocol` wraps its parser:

- a connection past `max_connections` open ones is answered 503 and closed at once;
- a request line and headers past `max_header_bytes` are answered 431 and the connection closes
  (bytes are counted as they arrive, before the parser buffers them);
- headers not complete `header_timeout_s` after the connection opened (or the request's first
  byte arrived, on a kept-alive connection) close the connection, with 408 if a request began;
- a body not complete `body_timeout_s` after its headers closes the connection (408 if no
  response has started).

Between requests, uvicorn's own keep-alive timeout closes idle connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Connections

log = logging.getLogger("jobbert_onnx.serve")

_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
_WARN_EVERY_S = 10.0  # under attack, one warning per kind every 10 s, not one per connection


def _reply(transport: asyncio.BaseTransport, status: int, message: str, error_type: str) -> None:
    """Write a complete TEI-shaped error response and close the connection."""
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    transport.write(head.encode("ascii") + b"\r\n" + body)  # type: ignore[attr-defined]
    transport.close()


class _Warnings:
    """Counts refusals per kind; logs a warning at most every `_WARN_EVERY_S` seconds per kind."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def note(self, kind: str, message: str) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            log.warning("%s (%d such connections since the last warning)", message, self._counts[kind])
            self._last[kind] = now
            self._counts[kind] = 0


class _Guard:
    """The guards, mixed in before one of uvicorn's protocol classes (which provides `super()`).

    Phases of a connection: reading a request's headers (counted and timed from the connection's
    start or the request's first byte), reading its body (timed), then the app's turn (no
    guard: the app has its own limits) until the request's message is complete.
    """

    limits: ClassVar[Connections]  # set by `guarded_protocol`
    warnings: ClassVar[_Warnings]

    # set in connection_made, before any other callback
    _refused: bool
    _reading_headers: bool
    _header_bytes: int
    _timer: asyncio.TimerHandle | None

    # -- uvicorn's protocol interface ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._timer = None
        self._reading_headers = True
        self._header_bytes = 0
        self._refused = len(self.server_state.connections) >= self.limits.max_connections  # type: ignore[attr-defined]
        if self._refused:
            self.warnings.note("cap", f"refused a connection: {self.limits.max_connections} are open (--max-connections)")
            _reply(transport, 503, f"the server has {self.limits.max_connections} open connections, its limit "
                                   "(--max-connections); retry shortly.", "Overloaded")
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:  # a refused connection never reached uvicorn's bookkeeping
            super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        while data and not transport.is_closing():
            if not self._reading_headers:
                super().data_received(data)  # type: ignore[misc]
                self._after_feed()
                return
            if self._timer is None and self._next_request_begins():  # e.g. on a kept-alive connection
                self._arm(self.limits.header_timeout_s, self._header_timeout)
            # Feed no more than the headers may still take, then see whether they completed.
            room = self.limits.max_header_bytes - self._header_bytes
            head, data = data[:room], data[room:]
            self._header_bytes += len(head)
            if head:
                super().data_received(head)  # type: ignore[misc]
                self._after_feed()
            if data and self._reading_headers and not transport.is_closing():
                self._headers_too_large()
                return

    # -- phase changes (called by the parser-specific subclasses) --------------------------------
    def _headers_done(self) -> None:
        if self._reading_headers:
            self._reading_headers = False
            self._arm(self.limits.body_timeout_s, self._body_timeout)

    def _message_done(self) -> None:
        self._disarm()  # the app's turn; between requests uvicorn's keep-alive timeout applies
        self._reading_headers = True
        self._header_bytes = 0

    def _after_feed(self) -> None:
        """After the parser has consumed data (h11 reports phases here, httptools by callbacks)."""

    def _next_request_begins(self) -> bool:
        """Whether bytes arriving now begin a request that the parser reads at once."""
        return True

    # -- the guards' actions -------------------------------------------------------------------
    def _headers_too_large(self) -> None:
        self._disarm()
        self.warnings.note("headers", f"refused a request whose headers passed {self.limits.max_header_bytes} bytes")
        transport = self.transport  # type: ignore[attr-defined]
        if self._responding():  # a pipelined request: a 431 now would land inside the response being sent
            transport.close()
            return
        _reply(transport, 431, f"the request line and headers passed {self.limits.max_header_bytes} bytes, "
                               "the limit (--max-header-bytes).", "Validation")

    def _header_timeout(self) -> None:
        # Nothing was asked when no header byte came: nothing to answer, the connection just closes.
        self._timed_out("header_timeout", "headers were", self.limits.header_timeout_s, "--header-timeout",
                        answer=bool(self._header_bytes))

    def _body_timeout(self) -> None:
        self._timed_out("body_timeout", "body was", self.limits.body_timeout_s, "--body-timeout", answer=True)

    def _timed_out(self, kind: str, what: str, seconds: float, flag: str, answer: bool) -> None:
        """Close the connection, with a 408 first when a request began and no response is under way."""
        self._timer = None
        transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing():
            return
        self.warnings.note(kind, f"closed a connection: the request {what} not complete after {seconds:g} s ({flag})")
        if answer and not self._responding():
            _reply(transport, 408, f"the request {what} not complete within {seconds:g} s ({flag}).", "Validation")
        else:
            transport.close()

    def _responding(self) -> bool:
        """Whether the app has started a response on this connection (then no 408 may be written)."""
        cycle = getattr(self, "cycle", None)
        return cycle is not None and cycle.response_started and not cycle.response_complete

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _GuardedH11(_Guard, H11Protocol):
    """h11 keeps its state in `conn.their_state`: IDLE until a request's headers are complete, then
    SEND_BODY, then DONE once its message is complete, until the response is sent (data arriving
    meanwhile waits in h11, unparsed, with reading paused)."""

    _finished_cycle: Any = None  # the request whose message was last seen complete

    def _next_request_begins(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _after_feed(self) -> None:
        state = self.conn.their_state
        if state is h11.IDLE or self.cycle is self._finished_cycle:
            return
        self._headers_done()
        if state is not h11.SEND_BODY:  # DONE, MUST_CLOSE, CLOSED or ERROR
            self._finished_cycle = self.cycle
            self._message_done()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._after_feed()  # a pipelined request may have been parsed just now


def _guarded_httptools() -> type[asyncio.Protocol] | None:
    """The httptools protocol, guarded; None when httptools is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class _GuardedHttpTools(_Guard, HttpToolsProtocol):
        """httptools reports the phases through its parser callbacks."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._headers_done()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._message_done()

    return _GuardedHttpTools


def guarded_protocol(limits: Connections, parser: str = "auto") -> type[asyncio.Protocol]:
    """A protocol class for `uvicorn.Config(http=...)` that enforces `limits` (max_connections must be set).

    parser: "httptools" (the fast one), "h11", or "auto" (httptools when installed).
    """
    if limits.max_connections is None:
        raise ValueError("guarded_protocol needs a concrete max_connections (see serve.server.connection_cap).")
    if parser not in ("auto", "httptools", "h11"):
        raise ValueError(f"unknown HTTP parser {parser!r}; use auto, httptools or h11.")
    base = None if parser == "h11" else _guarded_httptools()
    if base is None:
        if parser == "httptools":
            raise ValueError("--http httptools: httptools is not installed (pip install 'jobbert-onnx[serve]').")
        base = _GuardedH11
    return type(base.__name__, (base,), {"limits": limits, "warnings": _Warnings()})
