"""The server's settings: every limit with its default, checked once at start-up."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Limits:
    """What one request, one batch, the queue and the cache may hold. Each is a `serve` flag.

    The defaults suit JobBERT-v3 on a CPU: 32 texts per batch is the runtime's best CPU throughput
    (`bench/results/speed.md`); 16,384 padded tokens is 32 texts of 512 tokens, so the token
    limit only binds for long-context models; a full queue of 1,024 titles is a few seconds of
    work on two cores, well inside the queue timeout, so overload answers 429 at once rather than
    503 after a long wait. On a GPU, raise the batch and queue limits.
    """

    max_body_bytes: int = 2_000_000  # request body, checked before the body is read (TEI's default)
    max_inputs: int = 512  # texts per request (source + target for /similarity)
    max_chars: int = 50_000  # characters per text
    max_batch_items: int = 32  # texts per inference batch
    max_batch_tokens: int = 16_384  # padded tokens per batch: items x longest item
    batch_wait_ms: float = 0.0  # how long the inference thread waits for a batch to fill
    max_queue_items: int = 1024  # distinct texts waiting for inference; beyond: 429
    queue_timeout_s: float = 5.0  # a text waiting longer is dropped unrun and answered 503
    cache_mb: float = 64.0  # LRU cache of embeddings, by bytes; 0 turns it off
    cache_entries: int = 100_000  # ... and by entries

    def check(self, max_seq_length: int) -> None:
        """Raise ValueError naming the first limit that cannot work with a model of `max_seq_length`."""
        positive = ("max_body_bytes", "max_inputs", "max_chars", "max_batch_items", "max_batch_tokens", "max_queue_items")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        for name in ("batch_wait_ms", "cache_mb", "cache_entries"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}.")
        if self.queue_timeout_s <= 0:
            raise ValueError(f"--queue-timeout must be positive, got {self.queue_timeout_s}.")
        if self.max_batch_tokens < max_seq_length:
            raise ValueError(
                f"--max-batch-tokens {self.max_batch_tokens} is below the model's max_seq_length "
                f"{max_seq_length}: one full-length text would never fit in a batch."
            )
        if self.max_queue_items < self.max_inputs:
            raise ValueError(
                f"--max-queue-items {self.max_queue_items} is below --max-inputs {self.max_inputs}: "
                "a full request could never be queued."
            )

    @property
    def cache_bytes(self) -> int:
        return int(self.cache_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServerConfig:
    """How the app behaves, apart from the network address (which only `run_server` needs)."""

    limits: Limits = field(default_factory=Limits)
    served_model_name: str = "jobbert"
    api_key: str | None = None  # when set, every route but /health, /ready and /metrics needs it
    drain_seconds: float = 0.0  # after SIGTERM: /ready answers 503 this long before the socket closes
    shutdown_timeout_s: float = 30.0  # then in-flight requests get this long to finish
