"""The server's settings: every limit with its default and its allowed range, checked once at start-up.

Each numeric setting is declared once, as a dataclass field (`_bounded`) holding its default,
its flag, its help and its allowed range: `serve.cli` builds the flags from these fields, and one
generic check (`check_bounds`) refuses NaN, infinities and out-of-range values before the model
loads, with a one-line message naming the flag.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DAY_S = 86_400.0  # the longest timeout or wait that any setting accepts


@dataclass(frozen=True)
class Bound:
    """The range a numeric setting must lie in, and the flag that sets it (named in every error)."""

    flag: str
    low: float
    high: float = math.inf
    integer: bool = False
    low_open: bool = False  # `low` itself is refused (a timeout of 0 would refuse everything)
    optional: bool = False  # None is accepted (it means "choose for me")

    def check(self, value: Any) -> None:
        """Raise ValueError naming the flag unless `value` is a finite number in range."""
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            kind = "an integer" if self.integer else "a number"
            raise ValueError(f"{self.flag} must be {kind}, got {value!r}.")
        if not math.isfinite(value):
            raise ValueError(f"{self.flag} must be a finite number, got {value}.")
        if value < self.low or (self.low_open and value == self.low) or value > self.high:
            raise ValueError(f"{self.flag} must be {self.describe()}, got {_show(value)}.")

    def describe(self) -> str:
        if math.isinf(self.high):
            if self.low_open:
                return "positive" if self.low == 0 else f"above {_show(self.low)}"
            return "at least 0 (not negative)" if self.low == 0 else f"at least {_show(self.low)}"
        if self.low_open:
            return f"above {_show(self.low)} and at most {_show(self.high)}"
        return f"between {_show(self.low)} and {_show(self.high)}"


def _show(value: float) -> str:
    """1e+06 reads worse than 1000000 in an error message; 0.5 stays 0.5."""
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def _bounded(default: Any, flag: str, low: float, high: float = math.inf, *, help: str,
             shown: str | None = None, **rules: bool) -> Any:
    """A dataclass field with its default, its `Bound` (read back by `check_bounds`) and its flag's
    help (read by `serve.cli`); `shown`: how the help names the default, when not the value itself."""
    return field(default=default, metadata={"bound": Bound(flag, low, high, **rules), "help": help, "shown": shown})


def flag_fields(settings: Any) -> list[tuple[str, Bound, Any, str]]:
    """(field name, bound, default, help with the default) of each flag-backed field of the dataclass
    `settings` (a class or an instance), in declaration order."""
    out = []
    for item in fields(settings):
        bound = item.metadata.get("bound")
        if bound is not None:
            default = item.default
            shown = item.metadata["shown"] or _show(default)
            out.append((item.name, bound, default, f"{item.metadata['help']} (default {shown})"))
    return out


def check_bounds(settings: Any) -> None:
    """Check every field of the dataclass `settings` that declares a `Bound`."""
    for item in fields(settings):
        bound = item.metadata.get("bound")
        if bound is not None:
            bound.check(getattr(settings, item.name))


# Flags that live outside these dataclasses, checked by `check_process_flags`.
PORT = Bound("--port", 0, 65_535, integer=True)  # 0: any free port
THREADS = Bound("--threads", 1, 1024, integer=True, optional=True)  # None: one per physical core


def check_process_flags(port: int, threads: int | None) -> None:
    """The listening port and onnxruntime's thread count."""
    PORT.check(port)
    THREADS.check(threads)


@dataclass(frozen=True)
class Limits:
    """What one request, one batch, the queue and the cache may hold. Each is a `serve` flag.

    The defaults suit JobBERT-v3 on a CPU: 32 texts per batch is the runtime's best CPU throughput
    (`bench/results/speed.md`); 16,384 padded tokens is 32 texts of 512 tokens, so the token
    limit only binds for long-context models; a full queue of 1,024 titles is a few seconds of
    work on two cores, well inside the queue timeout, so overload answers 429 at once rather than
    503 after a long wait. On a GPU, raise the batch and queue limits.
    """

    max_body_bytes: int = _bounded(2_000_000, "--max-body-bytes", 1, integer=True,
                                   help="request body size (TEI's default), checked against Content-Length and while "
                                        "reading, before the whole body is read; beyond: 413")
    max_inputs: int = _bounded(512, "--max-inputs", 1, integer=True,
                               help="texts per request (source + target for /similarity); beyond: 413")
    max_chars: int = _bounded(50_000, "--max-chars", 1, integer=True, help="characters per text (texts are cut to max_seq_length tokens anyway; this bounds "
                                    "the work before that); beyond: 413")
    max_batch_items: int = _bounded(32, "--max-batch-items", 1, integer=True,
                                    help="texts per inference batch (the CPU's best throughput; on a GPU raise it, e.g. "
                                         "256, and --max-queue-items with it); 1 turns batching off")
    max_batch_tokens: int = _bounded(16_384, "--max-batch-tokens", 1, integer=True,
                                     help="padded tokens per batch, texts x longest; at least max_seq_length")
    # below --queue-timeout: see check_values
    batch_wait_ms: float = _bounded(0.0, "--batch-wait-ms", 0, DAY_S * 1000,
                                    help="how long a batch waits to fill once a text is queued (0: run when free); below "
                                         "--queue-timeout")
    max_queue_items: int = _bounded(1024, "--max-queue-items", 1, integer=True,
                                    help="distinct texts waiting for inference, at least --max-inputs; beyond, or while the "
                                         "queued work would not run within --queue-timeout: 429")
    queue_timeout_s: float = _bounded(5.0, "--queue-timeout", 0, DAY_S, low_open=True,
                                      help="a request none of whose texts started this long after it arrived is "
                                           "dropped and answered 503; one that could not run within it is refused "
                                           "at once (429, or 413 when it alone is too much)")
    # At most 1 TiB: a larger number is a typo.
    cache_mb: float = _bounded(64.0, "--cache-mb", 0, 1024 * 1024,
                               help="embedding cache size in MiB; 0 turns it off")
    cache_entries: int = _bounded(100_000, "--cache-entries", 0, integer=True, help="embedding cache entries at most")

    def check_values(self) -> None:
        """Raise ValueError naming the first flag whose value cannot work, whatever the model."""
        check_bounds(self)
        if self.batch_wait_ms >= self.queue_timeout_s * 1000:
            raise ValueError(
                f"--batch-wait-ms {_show(self.batch_wait_ms)} is not below --queue-timeout "
                f"{_show(self.queue_timeout_s)} s: a lone text would wait out its queue timeout for a batch to fill."
            )
        if self.max_queue_items < self.max_inputs:
            raise ValueError(
                f"--max-queue-items {self.max_queue_items} is below --max-inputs {self.max_inputs}: "
                "a full request could never be queued."
            )

    def check(self, max_seq_length: int) -> None:
        """Raise ValueError naming the first limit that cannot work with a model of `max_seq_length`."""
        self.check_values()
        if self.max_batch_tokens < max_seq_length:
            raise ValueError(
                f"--max-batch-tokens {self.max_batch_tokens} is below the model's max_seq_length "
                f"{max_seq_length}: one full-length text would never fit in a batch."
            )

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Connections:
    """What one connection may cost before the app sees a request (`serve.protocol` enforces it).

    uvicorn bounds none of this with httptools: a client could send headers without end, hold a
    connection open without sending anything, or never finish its body, and enough such
    connections exhaust the process's file descriptors (then every new client is reset).
    """

    # None: chosen at start-up by `serve.server.connection_cap`.
    max_connections: int | None = _bounded(None, "--max-connections", 1, integer=True, optional=True,
                                           help="open connections at most; a connection past them is answered 503 and closed at "
                                                "once. Checked against `ulimit -n` at start-up (the soft limit is raised "
                                                "toward the hard one if needed)",
                                           shown="1024, or the file-descriptor limit minus 64 if lower")
    # 64 KiB is 8x the 8 KiB that most proxies allow; 1 KiB is the least an ordinary client needs.
    max_header_bytes: int = _bounded(65_536, "--max-header-bytes", 1024, 16 * 1024 * 1024, integer=True,
                                     help="request line and headers together; past them: 431 and the connection "
                                          "closes (counted as bytes arrive, for httptools and h11 alike)")
    header_timeout_s: float = _bounded(10.0, "--header-timeout", 0, DAY_S, low_open=True,
                                       help="a connection whose request headers are not complete this long after it "
                                            "opened (or after the request's first byte, on a kept-alive connection) is "
                                            "closed, with 408 if a request began; bytes trickling in do not extend it")
    # 2 MB at 70 KB/s
    body_timeout_s: float = _bounded(30.0, "--body-timeout", 0, DAY_S, low_open=True,
                                     help="a request body not complete this long after its headers: 408 and the "
                                          "connection closes")

    def check(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class ServerConfig:
    """How the app behaves, apart from the network address (which only `run_server` needs)."""

    limits: Limits = field(default_factory=Limits)
    served_model_name: str = "jobbert"
    api_key: str | None = None  # when set, every route but /health, /ready and /metrics needs it
    drain_seconds: float = _bounded(0.0, "--drain-seconds", 0, DAY_S,
                                    help="after SIGTERM, how long /ready answers 503 before the socket closes")
    shutdown_timeout_s: float = _bounded(30.0, "--shutdown-timeout", 0, DAY_S,
                                         help="then give in-flight requests this long to finish; texts still queued "
                                              "after it get 503 and are not run")
    connections: Connections = field(default_factory=Connections)

    def check(self) -> None:
        """Raise ValueError naming the first setting that cannot work (the model's own checks are in Limits.check)."""
        check_bounds(self)
        self.limits.check_values()
        self.connections.check()
        if self.api_key is not None:
            check_api_key(self.api_key, "the api_key setting")


def check_api_key(key: str, source: str) -> None:
    """Refuse a key that would fail open (empty) or that no client could send (it travels in a header)."""
    if not key:
        raise ValueError(f"{source}: the API key is empty; the server would run without authentication. "
                         "Set a key, or remove the setting to run without one.")
    if any(c.isspace() for c in key):
        raise ValueError(f"{source}: the API key has whitespace inside; a key must be one word.")
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ValueError(f"{source}: the API key must be printable ASCII (it is sent in an HTTP header).")


def clean_api_key(raw: str, source: str) -> str:
    """The key with surrounding whitespace (a file's or a variable's trailing newline) stripped, checked."""
    key = raw.strip()
    check_api_key(key, source)
    return key
