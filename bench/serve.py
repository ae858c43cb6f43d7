"""Load test of `jobbert-onnx serve`: `python -m bench.serve --data PATH`.

An asyncio driver (a minimal keep-alive HTTP/1.1 client: `Connection` says why not httpx) against real
server processes on loopback, with the JobBERT-v3-sized
int8 artifact (`bench.reference_model`, exported as `bench.speed` does; `--artifact` takes any
other) and the data's job titles. Measured in one run:

* variants:
  1. `in-process`: `Embedder.encode` at batch 32 (the ceiling) and at batch 1 (latency), in a
     process of its own;
  2. `server`: our server (`--cache-mb 0`, so that every title runs through the model);
  3. `server-unbatched`: the same with `--max-batch-items 1`;
  4. `infinity`: infinity-emb serving the same checkpoint (without its Asym head, as the other
     peers get it: infinity has no Dense head) with its default engine, from `.venv-peer-infinity`
     (`python -m venv .venv-peer-infinity && .venv-peer-infinity/bin/pip install torch==2.13.0 &&
     .venv-peer-infinity/bin/pip install "infinity-emb[server,torch]==0.0.78"`);
* workload: closed loops of single-title requests at concurrency 1, 8, 64 and 256, and 32-title
  requests at concurrency 1 and 8, each over the OpenAI route with float output;
* repeated titles: a Zipf stream (s = 1.1) at concurrency 64, with the cache on and off;
* overload: an open loop at 3x the server's single-title saturation, default limits;
* soak: an open loop at 70% of saturation for `--soak-seconds` (default 600), RSS sampled.

The driver shares the machine with the server: its CPU time is reported with each run. Writes
`serve.json`, `serve.md` and `serve.png` to `--results`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import cycle
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import orjson

from bench.machine import machine_info
from bench.plots import log2_lines

ROOT = Path(__file__).resolve().parent.parent
INFINITY_VENV = ROOT / ".venv-peer-infinity"
SERVED_NAME = "jobbert"
CONCURRENCY = (1, 8, 64, 256)
BATCH32_CONCURRENCY = (1, 8)
ZIPF_S = 1.1


def _log(message: str) -> None:
    print(f"[serve-bench] {message}", file=sys.stderr, flush=True)


# -- measurements -----------------------------------------------------------------------------------
@dataclass
class LoadResult:
    """One load run: rates, latency percentiles (ms), errors by status, and the driver's own CPU."""

    requests: int
    titles: int
    seconds: float
    titles_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: dict[str, int]
    driver_cpu_s: float
    statuses: dict[str, int] = field(default_factory=dict)
    rejected_p99_ms: float | None = None  # 429s only (overload)
    accepted_p99_ms: float | None = None  # 200s only (overload)
    timeline: list[dict] = field(default_factory=list)  # open loops: statuses per 10 s of send time


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _summarize(samples: list[tuple[int, float, int]], seconds: float, cpu_s: float) -> LoadResult:
    """samples: (status, latency ms, titles) per request."""
    statuses: dict[str, int] = {}
    for status, _, _ in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [s for s in samples if s[0] == 200]
    titles = sum(s[2] for s in ok)
    latencies = [s[1] for s in ok]
    rejected = [s[1] for s in samples if s[0] == 429]
    return LoadResult(
        requests=len(samples), titles=titles, seconds=round(seconds, 2),
        titles_per_s=round(titles / seconds, 1), requests_per_s=round(len(ok) / seconds, 1),
        p50_ms=round(_percentile(latencies, 50), 2), p99_ms=round(_percentile(latencies, 99), 2),
        p999_ms=round(_percentile(latencies, 99.9), 2),
        errors={k: v for k, v in statuses.items() if k != "200"}, driver_cpu_s=round(cpu_s, 1), statuses=statuses,
        rejected_p99_ms=round(_percentile(rejected, 99), 2) if rejected else None,
        accepted_p99_ms=round(_percentile(latencies, 99), 2) if latencies else None,
    )


class Dialect:
    """How to ask one server kind for embeddings over the OpenAI route, and check the answer."""

    def __init__(self, path: str, model: str) -> None:
        self.path, self.model = path, model

    def body(self, texts: list[str]) -> bytes:
        return orjson.dumps({"input": texts, "model": self.model, "encoding_format": "float"})

    @staticmethod
    def count(body: bytes) -> int:
        return len(orjson.loads(body)["data"])


class Connection:
    """One keep-alive HTTP/1.1 connection: just enough client for a load test.

    httpx was measured first and is the wrong tool here: against a server that answered 11,800
    requests/s to this client (toy model, this 2-core machine), one shared `httpx.AsyncClient`
    managed 536 requests/s at 8 connections and 145 at 64, and 256 clients of one connection each
    34, while using up to 3.5x the CPU time: the driver would measure itself and starve the server.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send one request; a kept-alive connection that the server closed meanwhile (uvicorn closes
        idle ones after 5 s) is reopened and the request sent again, as HTTP clients do."""
        reused = self._writer is not None
        try:
            return await self._exchange(path, body)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.close()
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            return await self._exchange(path, body)

    async def _exchange(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self._writer.write(head + body)
        await self._writer.drain()
        status_line, *header_lines = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            payload = b""
            while size := int((await self._reader.readuntil(b"\r\n")).strip(), 16):
                payload += (await self._reader.readexactly(size + 2))[:-2]
            await self._reader.readuntil(b"\r\n")
        else:
            payload = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _request(connection: Connection, dialect: Dialect, texts: list[str]) -> tuple[int, float, int]:
    start = time.perf_counter()
    try:
        status, body = await connection.post(dialect.path, dialect.body(texts))
        if status == 200 and dialect.count(body) != len(texts):
            status = -2  # a wrong answer counts as an error
    except (OSError, asyncio.IncompleteReadError, ValueError):
        connection.close()
        status = -1  # a transport error (refused, reset, malformed)
    return status, (time.perf_counter() - start) * 1000, len(texts)


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def closed_loop(url: str, dialect: Dialect, texts: Iterator[list[str]], concurrency: int,
                      seconds: float, warm_up: float) -> LoadResult:
    """`concurrency` clients, each on its own connection, sending their next request when answered."""
    samples: list[tuple[int, float, int]] = []
    begin = time.perf_counter()
    record_from, stop_at = begin + warm_up, begin + warm_up + seconds
    cpu_start = None

    async def worker():
        nonlocal cpu_start
        connection = Connection(*_address(url))
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            sample = await _request(connection, dialect, next(texts))
            if started >= record_from:
                if cpu_start is None:
                    cpu_start = time.process_time()
                samples.append(sample)
        connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - (cpu_start or time.process_time())
    return _summarize(samples, time.perf_counter() - record_from, cpu)


async def open_loop(url: str, dialect: Dialect, texts: Iterator[list[str]], rate: float, seconds: float,
                    connections: int = 1024) -> LoadResult:
    """Requests sent at a fixed rate whatever the answers, on up to `connections` connections;
    latency is measured from the scheduled send time, so waiting for a free connection counts."""
    samples: list[tuple[int, float, int]] = []
    idle: list[Connection] = []
    slots = asyncio.Semaphore(connections)
    begin = time.perf_counter()
    cpu_start = time.process_time()

    timeline: dict[int, dict[str, int]] = {}

    async def one(scheduled: float, batch: list[str]):
        async with slots:
            connection = idle.pop() if idle else Connection(*_address(url))
            status, _, count = await _request(connection, dialect, batch)
            idle.append(connection)
        samples.append((status, (time.perf_counter() - scheduled) * 1000, count))
        bucket = timeline.setdefault(int((scheduled - begin) // 10) * 10, {})
        bucket[str(status)] = bucket.get(str(status), 0) + 1

    tasks, sent = [], 0
    while time.perf_counter() - begin < seconds:
        due = int((time.perf_counter() - begin) * rate) + 1
        while sent < due:
            tasks.append(asyncio.ensure_future(one(begin + sent / rate, next(texts))))
            sent += 1
        await asyncio.sleep(max(0.0, begin + sent / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    result = _summarize(samples, seconds, time.process_time() - cpu_start)
    result.timeline = [{"from_s": start, **counts} for start, counts in sorted(timeline.items())]
    return result


# -- server processes ---------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children (infinity forks), in MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Server:
    """A server process on loopback, its RSS sampled every `interval` seconds."""

    def __init__(self, command: list[str], ready_path: str, log: Path, interval: float = 0.5,
                 env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.log = log
        self._log_file = open(log, "w")
        self.process = subprocess.Popen([*command, "--port", str(self.port)], cwd=ROOT, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._started = time.perf_counter()
        threading.Thread(target=self._sample, args=(interval,), daemon=True).start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self.process.poll() is not None:
                return
            self.rss.append((time.perf_counter() - self._started, _rss_mb(self.process.pid)))

    def wait_ready(self, timeout: float = 600) -> float:
        """Seconds from start to the first 200 on the ready route."""
        import httpx

        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with {self.process.returncode} before it was ready: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return time.perf_counter() - self._started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.url + "/metrics", timeout=10).text

    @property
    def peak_rss_mb(self) -> float:
        return round(max((mb for _, mb in self.rss), default=0.0), 1)

    def stop(self) -> int | None:
        """SIGTERM, then the exit code (None if it had to be killed)."""
        self._stop.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self._log_file.close()
                return None
        self._log_file.close()
        return self.process.returncode


def our_server(artifact: Path, log: Path, *flags: str) -> Server:
    command = [sys.executable, "-m", "jobbert_onnx.serve", str(artifact), "--served-model-name", SERVED_NAME,
               "--log-level", "warning", *flags]
    return Server(command, "/ready", log)


def infinity_server(model: Path, log: Path) -> Server:
    # Its defaults otherwise (engine torch, batch size 32, warm-up, its access log).
    command = [str(INFINITY_VENV / "bin" / "infinity_emb"), "v2", "--model-id", str(model),
               "--served-model-name", "infinity", "--device", "cpu", "--host", "127.0.0.1"]
    return Server(command, "/health", log, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                                "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"})


# -- in-process ceiling ---------------------------------------------------------------------------------
def in_process(artifact: Path, titles_file: Path, seconds: float, latency_count: int) -> dict:
    """`Embedder.encode` in a fresh process: titles/s at batch 32, p50 at batch 1, peak RSS."""
    code = f"""
import json, resource, statistics, sys, time
from jobbert_onnx.runtime import Embedder
titles = json.load(open({str(titles_file)!r}))
embedder = Embedder({str(artifact)!r})
embedder.encode(titles[:64], batch_size=32)
done, start = 0, time.perf_counter()
while time.perf_counter() - start < {seconds}:
    batch = titles[done % len(titles):][:32] or titles[:32]
    embedder.encode(batch, batch_size=32)
    done += len(batch)
rate = done / (time.perf_counter() - start)
latencies = []
for title in titles[:{latency_count}]:
    t = time.perf_counter()
    embedder.encode([title], batch_size=1)
    latencies.append((time.perf_counter() - t) * 1000)
print(json.dumps({{"titles_per_s_batch32": round(rate, 1), "p50_ms_batch1": round(statistics.median(latencies), 2),
                  "p99_ms_batch1": round(sorted(latencies)[int(0.99 * (len(latencies) - 1))], 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired_latency(artifact: Path, titles_file: Path, url: str, rounds: int) -> dict:
    """p50 of one title, in-process `Embedder.encode([t])` against one request to the server, in
    alternating rounds of 20 from one fresh process, so that both see the same machine state
    (the two p50s in the tables above come from runs minutes apart)."""
    code = f"""
import http.client, json, statistics, time
from urllib.parse import urlparse
from jobbert_onnx.runtime import Embedder
titles = json.load(open({str(titles_file)!r}))
embedder = Embedder({str(artifact)!r})
embedder.encode(titles[:64], batch_size=32)
address = urlparse({url!r})
connection = http.client.HTTPConnection(address.hostname, address.port)

def request(title):
    body = json.dumps({{"input": [title], "model": {SERVED_NAME!r}}})
    connection.request("POST", "/v1/embeddings", body, {{"Content-Type": "application/json"}})
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status

calls = {{"in_process": lambda title: embedder.encode([title], batch_size=1), "server": request}}
samples = {{name: [] for name in calls}}
n = 0
for _ in range({rounds}):
    for name, call in calls.items():
        for i in range(23):  # the first 3 of each round warm up after the switch
            title = titles[n % len(titles)] + f" ({{n}})"  # never a cache hit
            n += 1
            start = time.perf_counter()
            call(title)
            if i >= 3:
                samples[name].append((time.perf_counter() - start) * 1000)
p50 = {{name: statistics.median(v) for name, v in samples.items()}}
print(json.dumps({{"rounds": {rounds}, "samples_each": len(samples["server"]),
                  "in_process_p50_ms": round(p50["in_process"], 2), "server_p50_ms": round(p50["server"], 2),
                  "difference_ms": round(p50["server"] - p50["in_process"], 2)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- workload -----------------------------------------------------------------------------------------
def singles(titles: list[str]) -> Iterator[list[str]]:
    return ([t] for t in cycle(titles))


def groups(titles: list[str], size: int) -> Iterator[list[str]]:
    chunks = [titles[i : i + size] for i in range(0, len(titles) - size + 1, size)]
    return cycle(chunks)


def unique_stream(titles: list[str]) -> Iterator[list[str]]:
    """Single titles that never repeat: each pass over the titles gets its own suffix."""
    n = 0
    while True:
        for title in titles:
            yield [title if n == 0 else f"{title} ({n})"]
        n += 1


def zipf_stream(titles: list[str], count: int, seed: int = 0) -> list[list[str]]:
    """`count` single-title requests drawn with P(rank r) proportional to r^-1.1."""
    ranks = np.arange(1, len(titles) + 1, dtype=np.float64)
    p = ranks ** -ZIPF_S
    p /= p.sum()
    picks = np.random.default_rng(seed).choice(len(titles), size=count, p=p)
    return [[titles[i]] for i in picks]


def _metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


# -- the run -------------------------------------------------------------------------------------------
def run_bench(args: argparse.Namespace) -> dict:
    titles, logs = _titles_and_logs(args)
    artifact, checkpoint = _artifact(args, titles)
    scratch = Path(tempfile.mkdtemp(prefix="jobbert-serve-bench-"))
    titles_file = scratch / "titles.json"
    titles_file.write_text(json.dumps(titles), encoding="utf-8")
    result: dict = {"machine": machine_info(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "artifact": str(artifact), "titles": len(titles), "seconds_per_run": args.seconds,
                    "concurrency": list(args.concurrency), "variants": {}}

    _log("in-process ceiling")
    result["in_process"] = in_process(artifact, titles_file, args.seconds, args.latency_count)
    _log(f"  {result['in_process']}")

    ours = Dialect("/v1/embeddings", SERVED_NAME)
    variants: dict[str, Callable[[Path], Server]] = {
        "server": lambda log: our_server(artifact, log, "--cache-mb", "0"),
        "server-unbatched": lambda log: our_server(artifact, log, "--cache-mb", "0", "--max-batch-items", "1"),
    }
    dialects = {"server": ours, "server-unbatched": ours}
    if args.peer == "infinity":
        reason = _infinity_unavailable()
        if reason:
            result["infinity_unavailable"] = reason
            _log(f"infinity: {reason}")
        else:
            from bench.peers import pooled_model

            pooled = pooled_model(checkpoint, Path(args.cache) / "reference-pooled-infinity")
            variants["infinity"] = lambda log: infinity_server(pooled, log)
            dialects["infinity"] = Dialect("/embeddings", "infinity")

    for name, start in variants.items():
        server = start(logs / f"{name}.log")
        try:
            ready_s = server.wait_ready()
        except RuntimeError as exc:
            server.stop()
            result.setdefault("failed", {})[name] = str(exc)
            _log(f"{name}: {exc}")
            continue
        runs: dict[str, dict] = {}
        for c in args.concurrency:
            run = asyncio.run(closed_loop(server.url, dialects[name], unique_stream(titles), c, args.seconds, args.warm_up))
            runs[f"single@{c}"] = asdict(run)
            _log(f"{name} single titles @{c}: {run.titles_per_s} titles/s, p50 {run.p50_ms} ms, "
                 f"p99 {run.p99_ms} ms, errors {run.errors}, driver CPU {run.driver_cpu_s} s")
        for c in BATCH32_CONCURRENCY:
            run = asyncio.run(closed_loop(server.url, dialects[name], groups(titles, 32), c, args.seconds, args.warm_up))
            runs[f"batch32@{c}"] = asdict(run)
            _log(f"{name} 32-title requests @{c}: {run.titles_per_s} titles/s, p50 {run.p50_ms} ms, errors {run.errors}")
        if name == "server" and args.paired_rounds > 0:
            result["paired_latency"] = paired_latency(artifact, titles_file, server.url, args.paired_rounds)
            _log(f"paired latency: {result['paired_latency']}")
        exit_code = server.stop()
        result["variants"][name] = {"runs": runs, "ready_s": round(ready_s, 2), "peak_rss_mb": server.peak_rss_mb,
                                    "exit_code": exit_code}

    saturation = max(v["titles_per_s"] for k, v in result["variants"]["server"]["runs"].items() if k.startswith("single@"))
    result["saturation_titles_per_s"] = saturation
    result["zipf"] = _zipf(artifact, titles, logs, args)
    result["overload"] = _overload(artifact, titles, logs, saturation, args)
    if args.soak_seconds > 0:
        result["soak"] = _soak(artifact, titles, logs, saturation, args)
    result["targets"] = targets(result)
    return result


def _titles_and_logs(args: argparse.Namespace) -> tuple[list[str], Path]:
    """The data's distinct job titles, and the folder for the servers' own logs (for when a run fails)."""
    from bench.workload import load_tasks, unique_titles

    logs = Path(args.cache) / "serve-logs"
    logs.mkdir(parents=True, exist_ok=True)
    return unique_titles(load_tasks(args.data)), logs


def rerun_soak(args: argparse.Namespace, previous: Path) -> dict:
    """The last full run's results with the soak run again (same artifact, same saturation), dated."""
    result = json.loads(previous.read_text(encoding="utf-8"))
    titles, logs = _titles_and_logs(args)
    result["soak"] = _soak(Path(result["artifact"]), titles, logs, result["saturation_titles_per_s"], args)
    result["soak"]["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["soak"]["machine"] = machine_info()
    result["targets"] = targets(result)
    return result


def _artifact(args: argparse.Namespace, titles: list[str]) -> tuple[Path, Path | None]:
    """The int8 artifact to serve and the checkpoint it came from (for the peer)."""
    if args.artifact:
        return Path(args.artifact), Path(args.checkpoint) if args.checkpoint else None
    from bench.artifacts import prepare_artifacts
    from bench.reference_model import build_reference_model

    model = build_reference_model(Path(args.cache) / "reference-model", titles)
    return prepare_artifacts(model, Path(args.cache), precisions=("int8",))["int8"], model


def _infinity_unavailable() -> str | None:
    python = INFINITY_VENV / "bin" / "python"
    if not python.exists():
        return f"{INFINITY_VENV} does not exist (see this module's docstring for the install commands)"
    probe = subprocess.run([str(python), "-c", "import infinity_emb, torch; print(infinity_emb.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"infinity_emb does not import in {INFINITY_VENV}: {probe.stderr.strip()[-500:]}"
    return None


def _zipf(artifact: Path, titles: list[str], logs: Path, args: argparse.Namespace) -> dict:
    stream = zipf_stream(titles, count=10**6)
    out = {}
    for label, flags in (("cache-on", ()), ("cache-off", ("--cache-mb", "0"))):
        server = our_server(artifact, logs / f"zipf-{label}.log", *flags)
        server.wait_ready()
        run = asyncio.run(closed_loop(server.url, Dialect("/v1/embeddings", SERVED_NAME), iter(stream), 64,
                                      args.seconds, args.warm_up))
        metrics = server.metrics()
        hits = _metric(metrics, "jobbert_onnx_cache_hits_total")
        misses = _metric(metrics, "jobbert_onnx_cache_misses_total")
        server.stop()
        out[label] = {**asdict(run), "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
                      "peak_rss_mb": server.peak_rss_mb}
        _log(f"zipf {label}: {run.titles_per_s} titles/s, hit rate {out[label]['hit_rate']}, errors {run.errors}")
    out["speedup"] = round(out["cache-on"]["titles_per_s"] / out["cache-off"]["titles_per_s"], 2)
    return out


def _overload(artifact: Path, titles: list[str], logs: Path, saturation: float, args: argparse.Namespace) -> dict:
    rate = 3 * saturation
    server = our_server(artifact, logs / "overload.log", "--cache-mb", "0")
    server.wait_ready()
    run = asyncio.run(open_loop(server.url, Dialect("/v1/embeddings", SERVED_NAME), unique_stream(titles), rate,
                                args.overload_seconds))
    metrics = server.metrics()
    labels = {"route": "/v1/embeddings", "status": "429"}
    rejected = _metric(metrics, "jobbert_onnx_request_duration_seconds_count", labels)
    fast = _metric(metrics, "jobbert_onnx_request_duration_seconds_bucket", {**labels, "le": "0.005"})
    alive = server.process.poll() is None
    import httpx

    healthy = alive and httpx.get(server.url + "/health", timeout=10).status_code == 200
    exit_code = server.stop()
    out = {**asdict(run), "rate": round(rate, 1), "server_429s": int(rejected),
           "server_429s_within_5ms": round(fast / rejected, 4) if rejected else None,
           "survived": bool(healthy), "exit_code": exit_code, "peak_rss_mb": server.peak_rss_mb}
    _log(f"overload at {rate:.0f}/s: statuses {run.statuses}, 429s within 5 ms (server side) "
         f"{out['server_429s_within_5ms']}, accepted p99 {run.accepted_p99_ms} ms, survived {healthy}")
    return out


def _soak(artifact: Path, titles: list[str], logs: Path, saturation: float, args: argparse.Namespace) -> dict:
    rate = 0.7 * saturation
    server = our_server(artifact, logs / "soak.log")  # the default cache: it fills, then evicts
    server.wait_ready()
    started = time.perf_counter() - server._started
    cache_full_at: list[float] = []

    def watch_cache() -> None:  # when the cache first reaches 95% of its bound, from /metrics
        from jobbert_onnx.serve.config import Limits

        bound = Limits().cache_bytes
        while server.process.poll() is None and not cache_full_at:
            try:
                if _metric(server.metrics(), "jobbert_onnx_cache_bytes") >= 0.95 * bound:
                    cache_full_at.append(time.perf_counter() - server._started - started)
            except Exception:  # noqa: BLE001 - the server is stopping
                return
            time.sleep(2)

    threading.Thread(target=watch_cache, daemon=True).start()
    run = asyncio.run(open_loop(server.url, Dialect("/v1/embeddings", SERVED_NAME), unique_stream(titles), rate,
                                args.soak_seconds))
    samples = [(t - started, mb) for t, mb in server.rss if t >= started]
    exit_code = server.stop()
    # RSS grows while the cache fills (by design, up to --cache-mb); leaks show after that.
    full = cache_full_at[0] if cache_full_at else None
    settled = [mb for t, mb in samples if t >= (full if full is not None else args.soak_seconds / 4)]
    baseline = settled[0] if settled else float("nan")
    final = samples[-1][1] if samples else float("nan")
    out = {**asdict(run), "rate": round(rate, 1), "rss_start_mb": round(samples[0][1], 1) if samples else None,
           "cache_full_at_s": round(full, 1) if full is not None else None,
           "rss_baseline_mb": round(baseline, 1), "rss_end_mb": round(final, 1),
           "rss_growth": round(final / baseline - 1, 4), "exit_code": exit_code,
           "rss_samples": [(round(t, 1), round(mb, 1)) for t, mb in samples[:: max(1, len(samples) // 120)]]}
    _log(f"soak at {rate:.0f}/s for {args.soak_seconds} s: statuses {run.statuses}, RSS {out['rss_start_mb']} -> "
         f"{out['rss_baseline_mb']} (cache full at {out['cache_full_at_s']} s) -> {out['rss_end_mb']} MB")
    return out


# -- targets and report --------------------------------------------------------------------------------------
def targets(result: dict) -> list[dict]:
    ceiling = result["in_process"]
    runs = result["variants"]["server"]["runs"]
    rows = []
    if "single@64" in runs:
        rows.append(("single titles @64 vs in-process batch 32", runs["single@64"]["titles_per_s"]
                     / ceiling["titles_per_s_batch32"], ">= 0.85", lambda v: v >= 0.85))
    if "paired_latency" in result:
        rows.append(("p50 of one title, server minus in-process batch 1, paired rounds (ms)",
                     result["paired_latency"]["difference_ms"], "<= 2", lambda v: v <= 2))
    elif "single@1" in runs:
        rows.append(("p50 @1 minus in-process batch-1 p50 (ms)", runs["single@1"]["p50_ms"] - ceiling["p50_ms_batch1"],
                     "<= 2", lambda v: v <= 2))
    errors = sum(sum(r["errors"].values()) for r in runs.values())
    rows.append(("errors at every tested concurrency (our server)", errors, "0", lambda v: v == 0))
    zipf = result["zipf"]
    rows.append(("Zipf stream: cache on vs off throughput", zipf["speedup"], ">= 3x", lambda v: v >= 3))
    overload = result["overload"]
    non_429 = sum(n for s, n in overload["statuses"].items() if s not in ("200", "429"))
    rows.append(("overload: non-429 errors", non_429, "0", lambda v: v == 0))
    if overload["server_429s_within_5ms"] is not None:
        rows.append(("overload: 429s answered within 5 ms (server side)", overload["server_429s_within_5ms"],
                     "1.0", lambda v: v >= 0.999))
    if overload["accepted_p99_ms"] is not None:
        timeout_ms = 1000 * _default_queue_timeout()
        rows.append(("overload: accepted p99 (ms) under the queue timeout", overload["accepted_p99_ms"],
                     f"< {timeout_ms:.0f}", lambda v: v < timeout_ms))
    rows.append(("overload: the process survives", overload["survived"], "yes", bool))
    if "soak" in result:
        soak = result["soak"]
        rows.append(("soak: RSS growth once the cache is full", soak["rss_growth"], "< 5%", lambda v: v < 0.05))
        rows.append(("soak: errors", sum(soak["errors"].values()), "0", lambda v: v == 0))
    return [{"target": name, "measured": value, "goal": goal, "met": bool(check(value))} for name, value, goal, check in rows]


def _default_queue_timeout() -> float:
    from jobbert_onnx.serve.config import Limits

    return Limits().queue_timeout_s


def to_markdown(result: dict) -> str:
    machine = result["machine"]
    ceiling = result["in_process"]
    lines = [
        "### Serving (`bench/serve.py`)",
        "",
        f"On {machine['cpu']}, {machine['cores']} cores, {result['date']}; artifact `{Path(result['artifact']).name}`, "
        f"{result['titles']} distinct job titles, {result['seconds_per_run']:g} s per run; the driver (asyncio, "
        "one keep-alive connection per client) shares the cores with the server.",
        "",
        f"In-process `Embedder.encode`: {ceiling['titles_per_s_batch32']} titles/s at batch 32; "
        f"p50 {ceiling['p50_ms_batch1']} ms at batch 1; peak RSS {ceiling['peak_rss_mb']} MB.",
        "",
    ]
    if "paired_latency" in result:
        paired = result["paired_latency"]
        lines += [f"Paired latency (one fresh process alternating {paired['rounds']} rounds, {paired['samples_each']} "
                  f"titles each way, no cache hits): in-process batch 1 p50 {paired['in_process_p50_ms']} ms, "
                  f"server p50 {paired['server_p50_ms']} ms: {paired['difference_ms']:+.2f} ms.", ""]
    lines += [
        "| variant | requests | concurrency | titles/s | p50 ms | p99 ms | p99.9 ms | non-200 (count x status) | driver CPU s | server peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, variant in result["variants"].items():
        for key, run in variant["runs"].items():
            kind, c = key.split("@")
            errors = ", ".join(f"{n} x {status}" for status, n in run["errors"].items()) or "0"
            lines.append(f"| {name} | {'1 title' if kind == 'single' else '32 titles'} | {c} | {run['titles_per_s']} | "
                         f"{run['p50_ms']} | {run['p99_ms']} | {run['p999_ms']} | {errors} | {run['driver_cpu_s']} | "
                         f"{variant['peak_rss_mb']} |")
    lines += ["", "Status -1 is a transport error (refused or reset connection), -2 a 200 with the wrong number of "
              "vectors. 429s in closed loops are the server refusing more than half its queue timeout of queued work: "
              "a client answered at once sends its next request at once."]
    if "infinity_unavailable" in result:
        lines += ["", f"infinity-emb was not measured: {result['infinity_unavailable']}."]
    for name, reason in result.get("failed", {}).items():
        lines += ["", f"{name} failed to start: {reason[:300]}"]
    zipf = result["zipf"]
    lines += [
        "",
        f"Zipf stream (s = {ZIPF_S}) at concurrency 64: cache on {zipf['cache-on']['titles_per_s']} titles/s "
        f"(hit rate {zipf['cache-on']['hit_rate']}), off {zipf['cache-off']['titles_per_s']} titles/s: "
        f"{zipf['speedup']}x.",
    ]
    overload = result["overload"]
    lines += [
        "",
        f"Overload at {overload['rate']} requests/s (3x saturation, {result['saturation_titles_per_s']} titles/s) for "
        f"{overload['seconds']:g} s, default limits: statuses {overload['statuses']}; server-side share of 429s "
        f"answered within 5 ms {overload['server_429s_within_5ms']}; accepted p99 {overload['accepted_p99_ms']} ms "
        f"(from the scheduled send time); rejected p99 {overload['rejected_p99_ms']} ms (client side); "
        f"process survived: {overload['survived']}.",
    ]
    if "soak" in result:
        soak = result["soak"]
        lines += [
            "",
            (f"Soak (run again on {soak['date']}, same saturation) " if "date" in soak else "Soak ")
            + f"at {soak['rate']} requests/s (70% of saturation) for {soak['seconds']:g} s, default cache: "
            f"statuses {soak['statuses']}; RSS {soak['rss_start_mb']} MB at start, {soak['rss_baseline_mb']} MB once "
            f"the cache was full ({soak['cache_full_at_s']} s in; a quarter in if it never filled), "
            f"{soak['rss_end_mb']} MB at the end ({100 * soak['rss_growth']:+.1f}%).",
        ]
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for row in result["targets"]:
        value = row["measured"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"| {row['target']} | {shown} | {row['goal']} | {'yes' if row['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    series = {name: [(int(k.split("@")[1]), r["titles_per_s"]) for k, r in variant["runs"].items()
                     if k.startswith("single@")] for name, variant in result["variants"].items()}
    log2_lines(path, series, "concurrent single-title requests", f"jobbert-onnx serve, {result['machine']['cores']} CPU cores",
               ("in-process batch 32", result["in_process"]["titles_per_s_batch32"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the job-title-similarity folder")
    parser.add_argument("--artifact", help="serve this artifact instead of the JobBERT-sized int8 export")
    parser.add_argument("--checkpoint", help="with --artifact: the checkpoint it came from (for infinity)")
    parser.add_argument("--cache", default=str(ROOT / "bench" / "cache"), help="where the reference model is cached")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per closed-loop run (default 20)")
    parser.add_argument("--warm-up", type=float, default=3, help="unmeasured seconds before each run (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--latency-count", type=int, default=300, help="in-process batch-1 latency samples")
    parser.add_argument("--paired-rounds", type=int, default=40,
                        help="rounds of the paired latency check, server against in-process (0 skips it)")
    parser.add_argument("--overload-seconds", type=float, default=20)
    parser.add_argument("--soak-seconds", type=float, default=600, help="0 skips the soak")
    parser.add_argument("--peer", choices=["infinity", "none"], default="infinity")
    parser.add_argument("--soak-only", action="store_true",
                        help="run the soak again at the saturation in --results/serve.json and replace its soak")
    args = parser.parse_args(argv)
    results = Path(args.results)
    result = rerun_soak(args, results / "serve.json") if args.soak_only else run_bench(args)
    results.mkdir(parents=True, exist_ok=True)
    (results / "serve.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (results / "serve.md").write_text(to_markdown(result), encoding="utf-8")
    plot(result, results / "serve.png")
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
