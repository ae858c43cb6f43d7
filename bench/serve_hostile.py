"""The server under hostile and heavy clients, and its single-title throughput measured with `wrk`:
`python -m bench.serve_hostile --data PATH` (issue 15).

Measured in one run, on the JobBERT-v3-sized int8 artifact (`bench.reference_model`, as
`bench.serve` builds it; `--artifact` takes any other), each server a fresh process on loopback:

* throughput: `wrk` (one thread, keep-alive, single-title `/embed` requests cycling over 512 titles,
  `--cache-mb 0`) at concurrency 64, against in-process `Embedder.encode` at batch 32, in
  alternating rounds; the ratio of medians is the target (>= 0.85);
* heavy requests: 3 clients each sending requests of 40 texts that no rule can cut (tokenized
  whole, ~48k characters each) while a probe asks `/health` every 10 ms: its p50/p99/max, and the
  server's RSS before, at the peak and after the burst;
* slowloris: more idle half-open connections than `--max-connections`, then the time until a new
  client is served again, and whether it is served during the attack.

Needs `wrk` on PATH (Debian: `apt-get install wrk`). Writes `serve_hostile.json` and
`serve_hostile.md` to `--results`. Time it on a quiet machine: the driver shares the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench.machine import machine_info
from bench.serve import _artifact, _rss_mb, _titles_and_logs, in_process, our_server

HEAVY_TEXT = "a\u0301\u0302" * 16_000  # letters with combining marks: no cut rule applies


def _log(message: str) -> None:
    print(f"[serve-hostile] {message}", file=sys.stderr, flush=True)


# -- throughput with wrk ----------------------------------------------------------------------------
_WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/embed", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def wrk(url: str, bodies: Path, connections: int, seconds: float) -> dict:
    """One `wrk` run (one thread) of single-title POSTs; requests/s, latency percentiles, errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True, env={"WRK_BODIES": str(bodies), "PATH": "/usr/bin:/bin"},
    ).stdout
    Path(script.name).unlink()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    percentiles = {f"p{p}_ms": _ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in (50, 90, 99)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"requests_per_s": rate, **percentiles, "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return round(float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def throughput(artifact: Path, titles: list[str], work: Path, logs: Path, rounds: int, seconds: float,
               flags: tuple[str, ...] = ()) -> dict:
    """Alternating rounds: in-process batch 32, then the server under wrk at c=64."""
    titles_file = work / "titles.json"
    titles_file.write_text(json.dumps(titles[:4096]), encoding="utf-8")
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"inputs": t}) + "\n" for t in titles[:512]), encoding="utf-8")
    server = our_server(artifact, logs / "hostile-throughput.log", "--cache-mb", "0", *flags)
    in_rates, server_runs = [], []
    try:
        server.wait_ready()
        wrk(server.url, bodies, 64, 3)  # warm the connection path
        for r in range(rounds):
            in_rates.append(in_process(artifact, titles_file, seconds, 20)["titles_per_s_batch32"])
            server_runs.append(wrk(server.url, bodies, 64, seconds))
            _log(f"round {r + 1}: in-process {in_rates[-1]} titles/s, server {server_runs[-1]['requests_per_s']} req/s")
        c1 = wrk(server.url, bodies, 1, seconds)
    finally:
        server.stop()
    in_median = statistics.median(in_rates)
    server_median = statistics.median(run["requests_per_s"] for run in server_runs)
    return {"flags": list(flags), "in_process_batch32": in_rates, "server_c64": server_runs, "server_c1": c1,
            "ratio": round(server_median / in_median, 3), "client": "wrk 4.1.0, 1 thread, keep-alive"}


# -- heavy requests ---------------------------------------------------------------------------------
async def _heavy(url: str, pid: int, clients: int, requests: int) -> dict:
    # Encoded up front: the driver's own JSON encoding would stall the probe that shares its loop.
    bodies = [json.dumps({"inputs": [f"{HEAVY_TEXT} {c} {r} {i}" for i in range(40)]}).encode()
              for c in range(clients) for r in range(requests)]
    waits: list[float] = []
    rss = [_rss_mb(pid)]
    done = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while not done.is_set():
                sent = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                waits.append(time.perf_counter() - sent)
                rss.append(_rss_mb(pid))
                await asyncio.sleep(0.01)

    async def client_loop(c: int) -> list[int]:
        statuses = []
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            for r in range(requests):
                route = "/tokenize" if r % 2 else "/embed"
                response = await client.post(route, content=bodies[c * requests + r],
                                             headers={"content-type": "application/json"})
                statuses.append(response.status_code)
        return statuses

    prober = asyncio.ensure_future(probe())
    started = time.perf_counter()
    statuses = await asyncio.gather(*[client_loop(c) for c in range(clients)])
    elapsed = time.perf_counter() - started
    done.set()
    await prober
    await asyncio.sleep(1.0)
    ms = sorted(w * 1000 for w in waits)
    return {"clients": clients, "requests_each": requests, "texts_per_request": 40, "chars_per_text": len(HEAVY_TEXT) + 6,
            "seconds": round(elapsed, 1), "statuses": sorted({s for run in statuses for s in run}),
            "health_checks": len(ms), "health_p50_ms": round(ms[len(ms) // 2], 2),
            "health_p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2), "health_max_ms": round(ms[-1], 2),
            "rss_before_mb": round(rss[0], 1), "rss_peak_mb": round(max(rss), 1), "rss_after_mb": round(_rss_mb(pid), 1)}


def heavy_requests(artifact: Path, logs: Path) -> dict:
    server = our_server(artifact, logs / "hostile-heavy.log", "--cache-mb", "0", "--max-body-bytes", "20000000")
    try:
        server.wait_ready()
        return asyncio.run(_heavy(server.url, server.process.pid, clients=3, requests=4))
    finally:
        server.stop()


# -- slowloris ---------------------------------------------------------------------------------------
def slowloris(artifact: Path, logs: Path, cap: int = 256, attackers: int = 400, header_timeout: float = 5.0) -> dict:
    """`attackers` connections that send half a request line and stop, against `--max-connections cap`."""
    server = our_server(artifact, logs / "hostile-slowloris.log", "--max-connections", str(cap),
                        "--header-timeout", f"{header_timeout:g}")
    host, port = server.url.removeprefix("http://").split(":")
    sockets: list[socket.socket] = []
    try:
        server.wait_ready()
        started = time.perf_counter()
        for _ in range(attackers):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            sockets.append(sock)
        during = _status(server.url)
        served_at = recovered = None
        open_attackers = list(sockets)
        while time.perf_counter() - started < 60:
            open_attackers = [sock for sock in open_attackers if not _closed(sock)]
            if _status(server.url) == 200:
                served_at = served_at or time.perf_counter() - started
                if not open_attackers:
                    recovered = round(time.perf_counter() - started, 2)
                    break
            time.sleep(0.1)
        return {"max_connections": cap, "attackers": attackers, "header_timeout_s": header_timeout,
                "new_client_during_attack": during, "recovered_after_s": recovered,
                "first_served_after_s": round(served_at, 2) if served_at else None}
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


def _status(url: str) -> int | str:
    try:
        return httpx.get(url + "/health", timeout=2).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (or answered it, with a 408, before closing)."""
    sock.setblocking(False)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


# -- report -----------------------------------------------------------------------------------------
def report(result: dict) -> str:
    machine, lines = result["machine"], []
    lines.append("# The server under hostile and heavy clients (issue 15)\n")
    lines.append(f"On {machine['cpu']}, {machine['cores']} cores, {result['date']}; artifact "
                 f"`{Path(result['artifact']).name}`. Run with `python -m bench.serve_hostile --data ...`. "
                 f"{result['note']}\n")
    for t in result["throughput"]:
        runs = t["server_c64"]
        lines.append(f"## Single titles at c=64 (`wrk`), server flags {' '.join(t['flags']) or '(defaults)'}\n")
        lines.append("| round | in-process batch 32 (titles/s) | server c=64 (req/s) | p50 ms | p99 ms | non-2xx |")
        lines.append("|---|---|---|---|---|---|")
        for i, (rate, run) in enumerate(zip(t["in_process_batch32"], runs), 1):
            lines.append(f"| {i} | {rate} | {run['requests_per_s']} | {run['p50_ms']} | {run['p99_ms']} | {run['non_2xx']} |")
        c1 = t["server_c1"]
        lines.append(f"\nRatio of medians: **{t['ratio']}** (target >= 0.85). c=1: {c1['requests_per_s']} req/s, "
                     f"p50 {c1['p50_ms']} ms. Client: {t['client']}.\n")
    h = result["heavy"]
    lines.append("## /health while heavy requests run\n")
    lines.append(f"{h['clients']} clients x {h['requests_each']} requests of {h['texts_per_request']} texts of "
                 f"{h['chars_per_text']:,} characters that no rule can cut, alternating /embed and /tokenize "
                 f"({h['seconds']} s, statuses {h['statuses']}). /health every 10 ms: {h['health_checks']} checks, "
                 f"p50 {h['health_p50_ms']} ms, p99 **{h['health_p99_ms']} ms**, max {h['health_max_ms']} ms "
                 f"(goal: within 100 ms). RSS {h['rss_before_mb']} MB before, {h['rss_peak_mb']} MB at the peak, "
                 f"**{h['rss_after_mb']} MB** one second after.\n")
    s = result["slowloris"]
    lines.append("## Slowloris\n")
    lines.append(f"{s['attackers']} connections sending half a request head, against `--max-connections "
                 f"{s['max_connections']} --header-timeout {s['header_timeout_s']:g}`: a new client during the attack "
                 f"got {s['new_client_during_attack']}; served again after {s['first_served_after_s']} s; every "
                 f"attacker closed and new clients served after **{s['recovered_after_s']} s**.\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the job-title-similarity folder (en/ de/ es/ zh/)")
    parser.add_argument("--artifact", help="an int8 artifact (default: build the JobBERT-sized reference)")
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=str(Path(__file__).parent / "cache"))
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--variant", action="append", default=[], metavar="FLAGS",
                        help="server flags of an extra throughput variant, e.g. '--threads 1' (repeatable)")
    parser.add_argument("--note", default="Nothing else ran on the machine.", help="what else ran, for the report")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench.serve_hostile: needs wrk on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    titles, logs = _titles_and_logs(args)
    artifact, _ = _artifact(args, titles)
    work = Path(tempfile.mkdtemp(prefix="serve-hostile-"))
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "artifact": str(artifact), "note": args.note, "throughput": []}
    for flags in [(), *(tuple(v.split()) for v in args.variant)]:
        result["throughput"].append(throughput(artifact, titles, work, logs, args.rounds, args.seconds, flags))
    result["heavy"] = heavy_requests(artifact, logs)
    _log(f"heavy: {result['heavy']}")
    result["slowloris"] = slowloris(artifact, logs)
    _log(f"slowloris: {result['slowloris']}")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "serve_hostile.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (results / "serve_hostile.md").write_text(report(result), encoding="utf-8")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
