"""Prometheus metrics, in a registry of the app's own (so that several apps can live in one process)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "jobbert_onnx"
# Latencies from 0.5 ms (a cache hit) to 30 s (a full queue timing out).
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ITEMS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    """Every metric the server exports; `registry` is what /metrics renders."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests by route and status.", ["route", "status"], registry=registry)
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "Request latency by route and status.", ["route", "status"],
            buckets=_SECONDS, registry=registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds", "Time a text waited in the queue before its batch ran.",
            buckets=_SECONDS, registry=registry,
        )
        self.inference = Histogram(
            f"{PREFIX}_inference_seconds", "Time one batch took in the encoder and heads.", buckets=_SECONDS, registry=registry
        )
        self.batch_items = Histogram(f"{PREFIX}_batch_items", "Distinct texts per batch.", buckets=_ITEMS, registry=registry)
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens", "Padded tokens per batch (texts x longest text).", buckets=_TOKENS, registry=registry
        )
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Distinct texts waiting for inference.", registry=registry)
        self.rejections = Counter(
            f"{PREFIX}_rejections", "Requests refused before inference, by reason.", ["reason"], registry=registry
        )
        self.dropped = Counter(
            f"{PREFIX}_dropped_items", "Queued texts dropped unrun (client gone, queue timeout).", ["reason"], registry=registry
        )
        self.shared_items = Counter(
            f"{PREFIX}_shared_items", "Texts that joined an identical queued or running text instead of queuing.",
            registry=registry,
        )
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens run through the model, by head.", ["head"], registry=registry)
        self.cache_hits = Counter(f"{PREFIX}_cache_hits", "Embedding cache hits.", registry=registry)
        self.cache_misses = Counter(f"{PREFIX}_cache_misses", "Embedding cache misses.", registry=registry)
        self.cache_evictions = Counter(f"{PREFIX}_cache_evictions", "Embedding cache evictions.", registry=registry)
        self.cache_entries = Gauge(f"{PREFIX}_cache_entries", "Embeddings in the cache.", registry=registry)
        self.cache_bytes = Gauge(f"{PREFIX}_cache_bytes", "Bytes the cache accounts for (keys, vectors, overhead).", registry=registry)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the server takes work (warmed up, not draining).", registry=registry)

    def watch(self, queue_depth: Callable[[], float], cache_stats: Callable[[], tuple[int, int]], ready: Callable[[], bool]) -> None:
        """Gauges read at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.cache_entries.set_function(lambda: cache_stats()[0])
        self.cache_bytes.set_function(lambda: cache_stats()[1])
        self.ready.set_function(lambda: float(ready()))
