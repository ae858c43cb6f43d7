"""Dynamic batching: one inference thread runs whatever the request handlers have queued.

Handlers (on the event loop) queue `Job`s, one per distinct (tokens, head), and wait on a
`Ticket`. Texts arrive tokenized (`PreparedTexts`): nothing is tokenized twice, and nothing
CPU-heavy runs on the event loop. The inference thread takes queued jobs in arrival order, up to
`max_batch_items` texts and `max_batch_tokens` padded tokens, whenever it is free; it runs the
encoder once per batch and each head on its own rows. The runtime's onnxruntime pool is the only pool that computes:
nothing runs inference on the web framework's threads.

Threads: the job queue and each job's `state` are shared under one lock; everything else (the
pending map, the tickets, the cache) belongs to the event loop, and the inference thread hands
results back with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from .metrics import Metrics

log = logging.getLogger("jobbert_onnx.serve")

from jobbert_onnx.runtime.prepared import PreparedTexts

QUEUED, RUNNING, DONE, DROPPED, EXPIRED = "queued", "running", "done", "dropped", "expired"
# A request is admitted only while the work ahead of it plus its own is estimated under this
# share of the queue timeout: the estimate is an average, and the margin absorbs its error.
ADMIT_SHARE = 0.8


class QueueFull(Exception):
    """Queuing the request would pass `max_queue_items`, or the work already queued (plus the
    request's own) would not run within the queue timeout."""


class RequestTooLarge(Exception):
    """The request alone is more work than the queue timeout allows, even on an idle server."""


class ShuttingDown(Exception):
    """The server's shutdown timeout passed: queued texts are not run."""


class QueueTimeout(Exception):
    """A job waited in the queue past `queue_timeout_s` and was dropped unrun."""


class BatchEmbedder(Protocol):
    """The part of `jobbert_onnx.runtime.Embedder` that the inference thread uses."""

    heads: list[str]

    def prepare(self, texts: Sequence[str], prompt_name: str | None = None) -> PreparedTexts: ...

    def pool(self, prepared: PreparedTexts, batch_size: int = 32) -> np.ndarray: ...

    def apply_head(self, pooled: np.ndarray, head: str | None = None, normalize: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class Item:
    """One text a request needs embedded: row `row` of `prepared`, for `head`.

    `key` names (tokens, head), the cache's key; `text_key` names the tokens alone, so that texts
    bound for several heads run the encoder once.
    """

    key: bytes
    text_key: bytes
    prepared: PreparedTexts
    row: int
    head: str

    @property
    def tokens(self) -> int:
        return int(self.prepared.offsets[self.row + 1] - self.prepared.offsets[self.row])


class Ticket:
    """One request's wait for its jobs: `future` resolves when all are done, or fails on the first error."""

    def __init__(self, loop: asyncio.AbstractEventLoop, jobs: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = jobs
        # Set (under the batcher's lock) once one of its jobs runs: from then on the request is
        # never expired, so an admitted request runs whole.
        self.started = False
        if jobs == 0:
            self.future.set_result(None)

    def job_finished(self, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
            return
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(None)


@dataclass(eq=False)
class Job:
    """A distinct (prompt, head, text) waiting for its vector; identical items share one job."""

    item: Item
    enqueued: float
    deadline: float
    tickets: list[Ticket] = field(default_factory=list)
    state: str = QUEUED
    vector: np.ndarray | None = None
    queue_s: float = 0.0
    inference_s: float = 0.0

    @property
    def started(self) -> bool:
        return any(ticket.started for ticket in self.tickets)


class Batcher:
    """The queue and the single inference thread.

    Args:
        embedder: runs the batches (`pool` then `apply_head`).
        max_items / max_tokens: per batch: distinct texts, and texts x longest text in tokens.
        batch_wait_s: once a job is queued, wait this long for the batch to fill (0: run at once).
        max_queued: distinct jobs that may wait; `submit` raises `QueueFull` beyond.
        queue_timeout_s: jobs of a request none of whose jobs has started this long after it
            arrived are dropped. `submit` refuses what could not run in time instead: it raises
            `RequestTooLarge` for a request that alone is more work than the timeout allows, and
            `QueueFull` while the queued work (tokens / tokens per second of recent full batches)
            is past half the timeout, or would be, with the request's own, past `ADMIT_SHARE` of it.
        max_seq_length: the model's; the warm-up runs the largest batch the limits allow with it.
        store: called on the event loop with (key, vector, tokens) for each computed job (the cache).
    """

    def __init__(
        self,
        embedder: BatchEmbedder,
        metrics: Metrics,
        max_items: int,
        max_tokens: int,
        batch_wait_s: float,
        max_queued: int,
        queue_timeout_s: float,
        max_seq_length: int,
        store: Callable[[bytes, np.ndarray, int], None] | None = None,
    ) -> None:
        self._embedder = embedder
        self._metrics = metrics
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.batch_wait_s = batch_wait_s
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self._store = store
        self.max_seq_length = max_seq_length
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._queued = 0  # jobs in state QUEUED (the deque may still hold dropped ones)
        self._queued_tokens = 0  # ... and their tokens
        self._pending: dict[bytes, Job] = {}  # event loop only: queued or running jobs by key
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        # Padded tokens per second of recent full batches (an exponential average): a backlog
        # longer than one batch drains in full batches, which run several times faster per text
        # than the batches of one or two that a lightly loaded server runs; those would make a
        # passing backlog look seconds long and refuse requests that would have run in time.
        # Tokens rather than texts, so that a request of long texts is not costed as titles.
        self.rate: float | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the inference thread: it warms up every head, sets `ready`, then runs batches."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="jobbert-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued job, then end the inference thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def abort(self) -> int:
        """The shutdown timeout passed: fail every queued job with `ShuttingDown` (their requests are
        answered 503) and run no further batch; the batch running now finishes. Thread-safe.
        Returns how many jobs were failed."""
        with self._lock:
            self._stopping = True
            aborted = [job for job in self._queue if job.state == QUEUED]
            for job in aborted:
                job.state = DROPPED
            self._queue.clear()
            self._queued = self._queued_tokens = 0
            self._lock.notify_all()
        if aborted:
            self._metrics.dropped.labels(reason="shutdown").inc(len(aborted))
        self._hand_back(aborted, ShuttingDown("the server shut down before these texts ran"))
        return len(aborted)

    @property
    def queued(self) -> int:
        return self._queued

    # -- event loop side -----------------------------------------------------------------
    def submit(self, items: Sequence[Item]) -> tuple[Ticket, list[Job]]:
        """Queue `items` (joining identical queued or running jobs); returns the ticket and each item's job.

        All or nothing: raises `RequestTooLarge` or `QueueFull` when the new distinct jobs would
        not run in time, and `ShuttingDown` once the queue was aborted.
        """
        assert self._loop is not None, "Batcher.start() was not called"
        now = time.monotonic()
        deadline = now + self.queue_timeout_s
        jobs: list[Job] = []
        fresh: dict[bytes, Job] = {}
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            for item in items:
                job = fresh.get(item.key) or self._pending.get(item.key)
                # A pending DONE job's results are on their way to the event loop (this thread),
                # which hands them to every ticket it holds by then: joining it is joining a result.
                if job is None or job.state not in (QUEUED, RUNNING, DONE):
                    job = fresh[item.key] = Job(item, now, deadline)
                jobs.append(job)
            if fresh:
                self._admit(len(fresh), sum(job.item.tokens for job in fresh.values()))
            distinct = list({id(j): j for j in jobs}.values())
            ticket = Ticket(self._loop, len(distinct))
            shared = 0
            for job in distinct:
                job.tickets.append(ticket)
                if fresh.get(job.item.key) is not job:  # an identical text already queued or running
                    shared += 1
                    job.deadline = max(job.deadline, deadline)
            for job in fresh.values():
                self._pending[job.item.key] = job
                self._queue.append(job)
            self._queued += len(fresh)
            self._queued_tokens += sum(job.item.tokens for job in fresh.values())
            if fresh:
                self._lock.notify()
        if shared:
            self._metrics.shared_items.inc(shared)
        return ticket, jobs

    def _admit(self, new: int, tokens: int) -> None:
        """Raise unless `new` more jobs of `tokens` tokens fit, by count and by estimated time (under the lock)."""
        if self._queued + new > self.max_queued:
            raise QueueFull(
                f"the queue holds {self._queued} texts; {new} more would pass --max-queue-items {self.max_queued}"
            )
        if not self.rate:
            return
        own, ahead = tokens / self.rate, self._queued_tokens / self.rate
        budget = ADMIT_SHARE * self.queue_timeout_s
        if own > budget:
            fits = max(1, int(new * budget / own))
            raise RequestTooLarge(
                f"this request's {new} texts ({tokens} tokens) are about {own:.1f} s of work at the server's "
                f"{self.rate:.0f} tokens/s, more than --queue-timeout {self.queue_timeout_s:g} s allows; send at "
                f"most about {fits} such texts per request, or raise --queue-timeout"
            )
        # The texts already queued run first: a request joins only while they are under half the
        # queue timeout of work and its own texts can still run in time.
        if ahead > self.queue_timeout_s / 2 or ahead + own > budget:
            raise QueueFull(
                f"the queue holds {self._queued} texts, about {ahead:.1f} s of work at {self.rate:.0f} tokens/s; "
                f"with this request's {own:.1f} s it would not run within --queue-timeout {self.queue_timeout_s:g} s"
            )

    def release(self, ticket: Ticket, jobs: Sequence[Job]) -> int:
        """The request gave up (client gone, or timed out): jobs nobody else waits for are dropped
        if still queued. Returns how many were dropped."""
        dropped = 0
        with self._lock:
            for job in {id(j): j for j in jobs}.values():
                if ticket in job.tickets:
                    job.tickets.remove(ticket)
                if not job.tickets and job.state == QUEUED:
                    job.state = DROPPED
                    self._queued -= 1
                    self._queued_tokens -= job.item.tokens
                    dropped += 1
                    if self._pending.get(job.item.key) is job:
                        del self._pending[job.item.key]
        return dropped

    def expire(self, ticket: Ticket, jobs: Sequence[Job]) -> int | None:
        """The request's queue timeout passed: give up (as `release`, returning how many jobs were
        dropped) unless one of its jobs has started, in which case it runs whole (None)."""
        with self._lock:
            if ticket.started:
                return None
            return self.release(ticket, jobs)

    def _deliver(self, jobs: list[Job], error: BaseException | None) -> None:
        """On the event loop: cache the vectors and wake the requests."""
        for job in jobs:
            if self._pending.get(job.item.key) is job:
                del self._pending[job.item.key]
            if error is None and self._store is not None and job.vector is not None:
                self._store(job.item.key, job.vector, job.item.tokens)
            for ticket in job.tickets:
                ticket.job_finished(error)

    def _hand_back(self, jobs: list[Job], error: BaseException | None = None) -> None:
        if jobs and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, jobs, error)

    # -- inference thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._warm_up()
        except BaseException as exc:  # noqa: BLE001 - reported by /ready and the log
            log.exception("warm-up failed; the server will not become ready")
            self.failure = exc
            return
        self.ready.set()
        while True:
            batch, expired, full = self._take()
            self._hand_back(expired, QueueTimeout("waited in the queue past --queue-timeout"))
            if batch is None:
                return
            if batch:
                self._compute(batch, full)

    def _warm_up(self) -> None:
        """The largest batch the limits allow (full-length texts) through the encoder and every head:
        the first request pays no set-up cost, and onnxruntime's arena and the allocator reach their
        peak before the server is ready, so that a burst later does not raise the process's memory
        for good. Also a first, low, throughput estimate (tokens/s at full length)."""
        rows = max(1, min(self.max_items, self.max_tokens // self.max_seq_length))
        text = " ".join(["warm-up"] * self.max_seq_length)  # at least max_seq_length tokens
        prepared = self._embedder.prepare([text] * rows)
        start = time.perf_counter()
        pooled = self._embedder.pool(prepared, batch_size=rows)
        for head in self._embedder.heads:
            self._embedder.apply_head(pooled, head)
        self.rate = int(prepared.counts.sum()) / max(time.perf_counter() - start, 1e-6)

    def _take(self) -> tuple[list[Job] | None, list[Job], bool]:
        """Wait for work; return (batch, expired jobs, whether a batch limit filled it). The batch is
        None once stopping and empty."""
        with self._lock:
            while self._queued == 0:
                if self._stopping:
                    self._queue.clear()  # only dropped jobs can be left
                    return None, [], False
                self._lock.wait()
            if self.batch_wait_s > 0:
                fill_by = time.monotonic() + self.batch_wait_s
                while self._queued < self.max_items and not self._stopping:
                    left = fill_by - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
            now = time.monotonic()
            batch: list[Job] = []
            expired: list[Job] = []
            texts: set[bytes] = set()
            longest = 0
            full = False
            while self._queue:
                job = self._queue[0]
                if job.state != QUEUED:  # dropped: its clients have gone
                    self._queue.popleft()
                    continue
                if job.deadline < now and not job.started:
                    self._queue.popleft()
                    job.state = EXPIRED
                    expired.append(job)
                    continue
                if job.item.text_key not in texts:
                    rows = len(texts) + 1
                    if batch and (rows > self.max_items or rows * max(longest, job.item.tokens) > self.max_tokens):
                        full = True
                        break
                    texts.add(job.item.text_key)
                    longest = max(longest, job.item.tokens)
                self._queue.popleft()
                job.state = RUNNING
                for ticket in job.tickets:
                    ticket.started = True
                batch.append(job)
            self._queued -= len(batch) + len(expired)
            self._queued_tokens -= sum(job.item.tokens for job in batch) + sum(job.item.tokens for job in expired)
        for job in batch:
            job.queue_s = now - job.enqueued
            self._metrics.queue_wait.observe(job.queue_s)
        if expired:
            self._metrics.dropped.labels(reason="queue_timeout").inc(len(expired))
        return batch, expired, full or len(texts) >= self.max_items

    def _compute(self, batch: list[Job], full: bool) -> None:
        start = time.perf_counter()
        try:
            row_of: dict[bytes, int] = {}
            firsts: list[Job] = []
            for job in batch:
                if job.item.text_key not in row_of:
                    row_of[job.item.text_key] = len(firsts)
                    firsts.append(job)
            prepared = PreparedTexts.concat(j.item.prepared.select([j.item.row]) for j in firsts)
            pooled = self._embedder.pool(prepared, batch_size=len(firsts))
            for head in {j.item.head for j in batch}:
                mine = [j for j in batch if j.item.head == head]
                vectors = self._embedder.apply_head(pooled[[row_of[j.item.text_key] for j in mine]], head)
                for job, vector in zip(mine, vectors):
                    job.vector = vector
        except BaseException as exc:  # noqa: BLE001 - answered as a 500 to every waiting request
            log.exception("inference failed for a batch of %d texts", len(batch))
            for job in batch:
                job.state = DONE
            self._hand_back(batch, exc)
            return
        elapsed = time.perf_counter() - start
        rows_total, padded = len(firsts), len(firsts) * int(prepared.counts.max())
        if full:
            sample = padded / max(elapsed, 1e-6)
            self.rate = sample if self.rate is None else 0.8 * self.rate + 0.2 * sample
        for job in batch:
            job.state = DONE
            job.inference_s = elapsed
            self._metrics.tokens.labels(head=job.item.head).inc(job.item.tokens)
        self._metrics.inference.observe(elapsed)
        self._metrics.batch_items.observe(rows_total)
        self._metrics.batch_tokens.observe(padded)
        self._hand_back(batch)
