"""What a client may hold before its request is read: header bytes, header and body time, connections.

Two levels. A small ASGI app under uvicorn in a thread, with `serve.protocol`'s guarded parser,
checks each guard exactly and for both parsers (httptools, the default, and h11). Then the real
`python -m jobbert_onnx.serve` process, as the hostile-user probe met it: floods of headers,
idle half-open connections past the connection cap and past a lowered file-descriptor limit.
Everything connects to 127.0.0.1 only; every loop is bounded; time bounds are generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Iterator

import httpx
import pytest
import uvicorn

from jobbert_onnx.serve.config import Connections
from jobbert_onnx.serve.protocol import guarded_protocol

from .serve_fakes import free_port, server_process

SLACK_S = 8.0  # what a slow, shared 2-core CI machine may add to any deadline below


# -- raw sockets -----------------------------------------------------------------------------------
def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (or `within` seconds pass): (data, closed)."""
    data, deadline = b"", time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def read_responses(sock: socket.socket, count: int = 1, within: float = 10.0) -> bytes:
    """Read until `count` complete responses (each with content-length) arrived, the server closed, or `within` s."""
    data, deadline = b"", time.monotonic() + within
    while time.monotonic() < deadline and complete_responses(data) < count:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        data += chunk
    return data


def complete_responses(data: bytes) -> int:
    done = 0
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        if len(rest) < length:
            break
        done, data = done + 1, rest[length:]
    return done


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def request_bytes(path: str = "/echo", headers_size: int = 0, body: bytes = b"", method: str = "POST") -> bytes:
    """A request whose request line and headers take exactly `headers_size` bytes (when given)."""
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
    if headers_size:
        pad = headers_size - len(head) - len("x-pad: \r\n\r\n")
        assert pad >= 0
        head += f"x-pad: {'a' * pad}\r\n"
    return (head + "\r\n").encode() + body


# -- a small app under the guarded parser ------------------------------------------------------------
async def echo_app(scope, receive, send) -> None:
    """/echo: the body's length; /slow: the same after 1.5 s (longer than the test timeouts)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def guarded_server(parser: str, **limits) -> Iterator[int]:
    """uvicorn in a thread around `echo_app` with the guarded `parser`; yields its port."""
    settings = {"max_connections": 64, "max_header_bytes": 4096, "header_timeout_s": 1.0, "body_timeout_s": 1.0, **limits}
    port = free_port()
    config = uvicorn.Config(echo_app, host="127.0.0.1", port=port, lifespan="on", log_level="error",
                            http=guarded_protocol(Connections(**settings), parser), timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(20)


PARSERS = ["httptools", "h11"]


@pytest.mark.parametrize("parser", PARSERS)
def test_headers_up_to_the_limit_pass_and_one_byte_more_gets_431(parser):
    with guarded_server(parser, max_header_bytes=4096) as port:
        with connect(port) as sock:
            sock.sendall(request_bytes(headers_size=4096, body=b"abc"))
            assert read_responses(sock).endswith(b"\r\n\r\n3")
        with connect(port) as sock:
            sock.sendall(request_bytes(headers_size=4097, body=b"abc"))
            response, closed = read_until_closed(sock, 10)
    assert status_of(response) == 431 and closed
    assert b"--max-header-bytes" in response


@pytest.mark.parametrize("parser", PARSERS)
def test_endless_headers_are_cut_off_after_the_limit(parser):
    """Headers that never end (no blank line): the server answers 431 and closes, having read ~4 KiB."""
    with guarded_server(parser, max_header_bytes=4096) as port, connect(port) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nhost: x\r\nx-flood: ")
        sent, closed_early = 0, False
        for _ in range(2000):  # up to 128 MB, far past any socket buffer
            try:
                sock.sendall(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                closed_early = True
                break
            sent += 65536
        response, closed = read_until_closed(sock, 10)
    assert closed_early, f"the server kept reading: {sent} bytes of headers accepted"
    assert closed and (response == b"" or status_of(response) == 431)


@pytest.mark.parametrize("parser", PARSERS)
def test_a_large_body_in_the_same_packets_as_small_headers_is_not_mistaken_for_headers(parser):
    body = b"x" * 200_000
    with guarded_server(parser, max_header_bytes=4096) as port, connect(port) as sock:
        sock.sendall(request_bytes(body=body) + request_bytes(body=b"pipelined"))  # two requests at once
        response = read_responses(sock, 2)
    assert response.count(b"HTTP/1.1 200") == 2, response
    assert response.endswith(b"\r\n\r\n9") and b"\r\n\r\n200000" in response


@pytest.mark.parametrize("parser", PARSERS)
def test_idle_and_partial_requests_are_closed_after_the_header_timeout(parser):
    with guarded_server(parser, header_timeout_s=1.0) as port:
        with connect(port) as idle, connect(port) as partial, connect(port) as dripping:
            started = time.monotonic()
            partial.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\n")
            dripping.sendall(b"GET /echo HTTP/1.1\r\n")
            dripped = 0
            while time.monotonic() - started < 1.0 + SLACK_S:  # a byte every 0.2 s: data alone must not reset it
                try:
                    dripping.sendall(b"x-a: b\r\n"[dripped % 8:dripped % 8 + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                dripped += 1
                if read_until_closed(dripping, 0.2)[1]:
                    break
            dripping_closed_after = time.monotonic() - started
            idle_response, idle_closed = read_until_closed(idle, SLACK_S)
            partial_response, partial_closed = read_until_closed(partial, SLACK_S)
    assert idle_closed and idle_response == b""  # nothing asked, nothing answered
    assert partial_closed and status_of(partial_response) == 408 and b"--header-timeout" in partial_response
    assert 0.8 <= dripping_closed_after < 1.0 + SLACK_S


@pytest.mark.parametrize("parser", PARSERS)
def test_a_body_that_never_ends_is_answered_408_after_the_body_timeout(parser):
    with guarded_server(parser, body_timeout_s=1.0) as port, connect(port) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        response, closed = read_until_closed(sock, 1.0 + SLACK_S)
        elapsed = time.monotonic() - started
    assert closed and status_of(response) == 408 and b"--body-timeout" in response
    assert 0.8 <= elapsed < 1.0 + SLACK_S


@pytest.mark.parametrize("parser", PARSERS)
def test_timeouts_do_not_cut_a_slow_answer_or_the_next_request_on_a_kept_alive_connection(parser):
    """The app's turn is not timed: /slow takes 1.5 s with 0.5 s timeouts; then the connection serves again."""
    with guarded_server(parser, header_timeout_s=0.5, body_timeout_s=0.5) as port, connect(port) as sock:
        sock.sendall(request_bytes("/slow", body=b"ab"))
        first = read_responses(sock)
        sock.sendall(request_bytes(body=b"abcd"))
        second = read_responses(sock)
    assert status_of(first) == 200 and first.endswith(b"\r\n\r\n2")
    assert status_of(second) == 200 and second.endswith(b"\r\n\r\n4")


@pytest.mark.parametrize("parser", PARSERS)
def test_connections_over_the_cap_get_503_at_once_and_a_freed_slot_serves_again(parser):
    with guarded_server(parser, max_connections=3, header_timeout_s=30) as port:
        held = [connect(port) for _ in range(3)]
        time.sleep(0.2)  # let the server accept them
        with connect(port) as over:
            started = time.monotonic()
            refused, closed = read_until_closed(over, 5)
            assert closed and status_of(refused) == 503 and time.monotonic() - started < 5
        assert b"--max-connections" in refused and b"retry-after: 1" in refused.lower()
        held.pop().close()
        deadline = time.monotonic() + 10  # the server notices the close on its next loop turn
        while True:
            with connect(port) as fresh:
                try:
                    fresh.sendall(request_bytes(body=b"ok"))
                    answer = read_responses(fresh)
                except OSError:  # refused and closed before the request went out
                    answer = b""
            if status_of(answer) == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for sock in held:
            sock.close()
    assert status_of(answer) == 200


# -- the real server process -------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def flood_headers(port: int, megabytes: int) -> int:
    """Send `megabytes` of one header without end; the bytes the server took before it closed."""
    sent = 0
    with connect(port) as sock:
        try:
            sock.sendall(b"POST /embed HTTP/1.1\r\nhost: x\r\nx-flood: ")
            for _ in range(megabytes * 16):
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
    return sent


def test_header_floods_do_not_grow_the_real_server(artifact):
    """Three clients, 48 MB of headers each, at the default --max-header-bytes: RSS stays put."""
    with server_process(["-m", "jobbert_onnx.serve", str(artifact)]) as (process, url):
        port = int(url.rsplit(":", 1)[1])
        before = rss_mb(process.pid)
        threads = [threading.Thread(target=flood_headers, args=(port, 48)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        grown = rss_mb(process.pid) - before
        health = httpx.get(f"{url}/health", timeout=10)
        with connect(port) as sock:  # headers just over 64 KiB: 431, not 400 or a hang
            sock.sendall(request_bytes("/embed", headers_size=65_537, body=b"{}"))
            response, _ = read_until_closed(sock, 10)
    assert health.status_code == 200
    assert grown < 40, f"RSS grew by {grown:.0f} MB while 144 MB of headers were sent"
    assert status_of(response) == 431


def test_half_open_connections_past_the_cap_and_the_fd_limit_do_not_lock_the_server_out(artifact):
    """The probe's slowloris at a small scale: the child's open-file limit lowered to 160, so the
    default connection cap becomes 96; 220 idle connections. New clients get a quick 503 while the
    cap is full, and are served again once --header-timeout has closed the idle ones."""
    limit = 160
    wrapper = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); "
        "from jobbert_onnx.serve.cli import main; sys.exit(main(sys.argv[1:]))" % (limit, limit)
    )
    header_timeout = 3.0
    with server_process(["-c", wrapper, str(artifact), "--header-timeout", str(header_timeout)]) as (process, url):
        port = int(url.rsplit(":", 1)[1])
        idle = []
        for _ in range(220):
            try:
                idle.append(connect(port))
            except OSError:  # the backlog may refuse a few under load; the cap is what matters
                pass
        opened = time.monotonic()
        assert len(idle) > 150
        try:
            during = httpx.get(f"{url}/health", timeout=5).status_code
        except httpx.TransportError:  # closed at once is fine too; hanging is not (timeout=5)
            during = "closed"
        recovered_after = None
        while time.monotonic() - opened < header_timeout + 2 * SLACK_S:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    recovered_after = time.monotonic() - opened
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        closed_by_server = sum(read_until_closed(sock, 0.05)[1] for sock in idle)
        for sock in idle:
            sock.close()
        assert process.poll() is None, process.stdout.read()
        embed = httpx.post(f"{url}/embed", json={"inputs": "nurse"}, timeout=10)
    assert during in (503, "closed")
    assert recovered_after is not None and recovered_after < header_timeout + 2 * SLACK_S
    assert closed_by_server == len(idle)
    assert embed.status_code == 200


def test_the_h11_parser_is_guarded_in_the_real_server(artifact):
    """`--http h11 --max-header-bytes 2048`: requests are served; 2,049 bytes of headers get 431."""
    with server_process(["-m", "jobbert_onnx.serve", str(artifact), "--http", "h11", "--max-header-bytes", "2048"]) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        embed = httpx.post(f"{url}/embed", json={"inputs": "nurse"}, timeout=10)
        with connect(port) as sock:
            sock.sendall(request_bytes("/embed", headers_size=2049, body=b"{}"))
            response, closed = read_until_closed(sock, 10)
    assert embed.status_code == 200 and len(embed.json()) == 1
    assert status_of(response) == 431 and closed
