"""The server as a real process on loopback: the official `openai` client, the CLI, and the SIGTERM drain."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from jobbert_onnx.runtime import Embedder

from . import toy_artifact
from .serve_fakes import server_process


def test_openai_client_unchanged_against_the_cli_server(artifact):
    """`python -m jobbert_onnx.serve` with the key from the environment; the client asks for base64."""
    texts = ["Senior Software Developer", "nurse", "data engineer python"]
    embedder = Embedder(artifact)
    with server_process(["-m", "jobbert_onnx.serve", str(artifact), "--served-model-name", "jobbert"],
                        env={"JOBBERT_ONNX_API_KEY": "s3cret"}) as (process, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        response = client.embeddings.create(model="jobbert", input=texts)
        positive = client.embeddings.create(model="jobbert/positive", input="senior nurse")
        listed = [m.id for m in client.models.list()]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).embeddings.create(model="jobbert", input="a")
        with pytest.raises(openai.UnprocessableEntityError, match="unknown model"):
            client.embeddings.create(model="text-embedding-3-small", input="a")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0

    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.encode(texts, normalize=True), rtol=1e-6, atol=1e-7)
    assert response.usage.prompt_tokens == int(embedder.token_counts(texts).sum())
    assert len(positive.data[0].embedding) == toy_artifact.HEAD_DIMS["positive"]
    assert listed == ["jobbert", "jobbert/anchor", "jobbert/positive"]


def test_sigterm_drains_in_flight_requests_and_exits_zero(artifact):
    """SIGTERM: /ready answers 503 at once, new work 503, the request in flight finishes, exit code 0."""
    with server_process(["-m", "tests.serve_fakes", str(artifact), "1.0"]) as (process, url):
        result: dict = {}

        def in_flight():
            result["response"] = httpx.post(f"{url}/embed", json={"inputs": "senior nurse", "normalize": False}, timeout=30)

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.4)  # the batch is running (it takes 1 s)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{url}/ready", timeout=5)  # the socket stays open for --drain-seconds (1 s here)
        refused = httpx.post(f"{url}/embed", json={"inputs": "data"}, timeout=5)
        thread.join(30)
        started = time.monotonic()
        code = process.wait(20)
        log = process.stdout.read()

    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert refused.status_code == 503 and refused.json()["error_type"] == "Unhealthy"
    response = result["response"]
    assert response.status_code == 200
    np.testing.assert_allclose(response.json(), Embedder(artifact).encode(["senior nurse"]), rtol=1e-6)
    assert code == 0, log
    assert time.monotonic() - started < 15
    assert "draining" in log


def test_load_test_driver_counts_what_it_sends(artifact):
    """bench/serve.py's client against a real server: closed and open loops, answers checked."""
    import asyncio

    from bench.serve import Dialect, closed_loop, open_loop, unique_stream

    titles = ["nurse", "data engineer", "senior java developer"]
    with server_process(["-m", "jobbert_onnx.serve", str(artifact), "--served-model-name", "jobbert"]) as (process, url):
        dialect = Dialect("/v1/embeddings", "jobbert")
        closed = asyncio.run(closed_loop(url, dialect, unique_stream(titles), concurrency=4, seconds=0.5, warm_up=0.1))
        opened = asyncio.run(open_loop(url, dialect, unique_stream(titles), rate=100, seconds=0.5))
        wrong = asyncio.run(closed_loop(url, Dialect("/v1/embeddings", "nope"), unique_stream(titles), 2, 0.3, 0))
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    assert closed.requests > 10 and closed.errors == {} and closed.titles == closed.requests
    assert closed.p50_ms <= closed.p99_ms <= closed.p999_ms
    assert 40 <= opened.requests <= 60 and opened.errors == {}
    assert wrong.titles == 0 and set(wrong.errors) == {"422"}
