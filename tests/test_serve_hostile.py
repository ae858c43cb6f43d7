"""The server under heavy and careless requests (issue 15): texts tokenized once and off the event
loop, bounded memory after a large request, admission that accounts for the request's own size,
prompt names keyed apart in the cache, and a shutdown that ends on time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from jobbert_onnx.runtime import Embedder, Manifest

from . import toy_artifact
from .serve_fakes import REPO, FakeEmbedder, free_port, server_process, serving
from .test_serve import run, texts_of


def uncuttable(index: int, chars: int) -> str:
    """A text that no cut rule shortens (no spaces), so the tokenizer must read all of it."""
    return ("a!" * (chars // 2)) + str(index)


def test_each_text_is_tokenized_once(embedder, monkeypatch):
    """The handler prepares the texts, and the inference thread runs those tokens: before, the handler
    counted the tokens and the inference thread tokenized every text again."""
    tokenizer = embedder._tokenizer
    seen: list[int] = []
    original = tokenizer.encodings

    def counting(prepared):
        seen.append(len(prepared))
        return original(prepared)

    texts = texts_of(6, seed=11)

    async def scenario():
        async with serving(embedder, cache_mb=0) as (client, _):
            seen.clear()  # the warm-up tokenizes its own batch
            return await client.post("/embed", json={"inputs": texts + texts[:2], "normalize": False})

    monkeypatch.setattr(tokenizer, "encodings", counting)
    response = run(scenario())
    monkeypatch.undo()
    assert response.status_code == 200
    np.testing.assert_allclose(response.json(), embedder.encode(texts + texts[:2]), rtol=1e-6, atol=1e-6)
    assert sum(seen) == len(texts), seen  # six distinct texts, each tokenized once


def test_health_answers_while_large_requests_are_tokenized(exported):
    """Requests whose texts take a second to tokenize must not stall the event loop: /health keeps
    answering. Before, the handler tokenized on the loop, and /health waited for all of it."""
    embedder = Embedder(exported("jobbert_asym_model", "fp32"))
    marks = "a\u0301\u0302" * 15_000  # letters with combining marks: no cut rule applies
    heavy = [[f"{marks} {r} {i}" for i in range(40)] for r in range(3)]
    assert embedder._tokenizer.prepare(heavy[0][0]) == heavy[0][0]  # really uncut: tokenized whole

    async def scenario():
        async with serving(embedder, max_chars=50_000, max_body_bytes=20_000_000, queue_timeout_s=120) as (client, _):
            started = time.perf_counter()
            work = [asyncio.ensure_future(client.post("/tokenize", json={"inputs": heavy[0]})),
                    asyncio.ensure_future(client.post("/embed", json={"inputs": heavy[1]})),
                    asyncio.ensure_future(client.post("/v1/embeddings", json={"input": heavy[2], "model": "jobbert"}))]
            # The gaps between answers, less the 10 ms pause: the loop's stalls land in the
            # pauses as often as in the requests.
            waits, last = [], time.perf_counter()
            while not all(w.done() for w in work):
                assert (await client.get("/health")).status_code == 200
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                waits.append(now - last - 0.01)
                last = now
            return [w.result() for w in work], waits, time.perf_counter() - started

    responses, waits, elapsed = run(scenario())
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text[:200] for r in responses]
    assert responses[0].json()[5]["ids"] == embedder.tokenize([heavy[0][5]])[0]
    print(f"/health: {len(waits)} checks in {elapsed:.1f} s, longest {max(waits) * 1000:.0f} ms")
    assert len(waits) >= 10, f"only {len(waits)} health checks in {elapsed:.1f} s"
    # Generous for a loaded 2-core CI machine (the goal is 100 ms); the loop was blocked for over a
    # second before.
    assert max(waits) < 0.3, f"/health waited up to {max(waits) * 1000:.0f} ms"


def test_a_request_too_large_for_the_queue_timeout_is_refused_at_once(embedder):
    """At about 10 full-length texts per 0.1 s batch and a 1 s queue timeout, 64 such texts can never
    run in time: 413 at once, saying what to change, instead of a 503 after waiting."""
    fake = FakeEmbedder(embedder, delay=0.1)
    full_length = texts_of(64, seed=5, words=(12, 16))

    async def scenario():
        async with serving(fake, max_batch_items=4, queue_timeout_s=1.0, cache_mb=0) as (client, _):
            started = time.perf_counter()
            refused = await client.post("/embed", json={"inputs": full_length})
            waited = time.perf_counter() - started
            fits = await client.post("/embed", json={"inputs": full_length[:20]})
            return refused, waited, fits

    refused, waited, fits = run(scenario())
    assert refused.status_code == 413, refused.text
    message = refused.json()["error"]
    assert "64 texts" in message and "--queue-timeout 1 s" in message and "per request" in message
    assert waited < 0.5  # refused before anything ran
    assert fake.computed[:20] == full_length[:20] or sorted(fake.computed) == sorted(full_length[:20])
    assert fits.status_code == 200
    np.testing.assert_allclose(fits.json(), embedder.encode(full_length[:20], normalize=True), rtol=1e-5, atol=1e-6)


def test_an_admitted_request_runs_whole_even_past_the_queue_timeout(embedder):
    """Once a request's first batch runs, its remaining texts are never dropped: the estimate said it
    fits, but batches here take four times longer than the warm-up measured."""
    fake = FakeEmbedder(embedder, delay=0.05)
    texts = texts_of(24, seed=7, words=(12, 16))

    async def scenario():
        async with serving(fake, max_batch_items=4, queue_timeout_s=1.0, cache_mb=0) as (client, _):
            fake.delay = 0.2  # six batches: 1.2 s, past the 1 s timeout
            return await client.post("/embed", json={"inputs": texts, "normalize": False})

    response = run(scenario())
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json(), embedder.encode(texts), rtol=1e-5, atol=1e-6)
    assert sorted(fake.computed) == sorted(texts)


def test_a_prompt_named_empty_and_no_prompt_are_cached_apart(tmp_path):
    """A prompt called "" and the default prompt: before, both had the cache key's prompt part ""."""
    folder = toy_artifact.build(tmp_path / "toy")
    manifest = Manifest.load(folder)
    manifest.prompts = {"": "", "query": "senior "}
    manifest.default_prompt_name = "query"
    manifest.save(folder)
    embedder = Embedder(folder)
    texts = texts_of(4, seed=9, words=(1, 3))

    async def scenario():
        async with serving(embedder) as (client, _):
            answers = []
            for body in ({}, {"prompt_name": ""}, {"prompt_name": "query"}, {"prompt_name": ""}, {}):
                response = await client.post("/embed", json={"inputs": texts, "normalize": False, **body})
                assert response.status_code == 200, response.text
                answers.append(np.array(response.json(), dtype=np.float32))
            return answers

    default, empty, query, empty_again, default_again = run(scenario())
    np.testing.assert_allclose(default, embedder.encode(texts), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(empty, embedder.encode(texts, prompt_name=""), rtol=1e-6, atol=1e-6)
    assert not np.allclose(default, empty)
    for got, want in ((query, default), (empty_again, empty), (default_again, default)):
        np.testing.assert_array_equal(got, want)


def test_abort_answers_queued_requests_503_and_computes_no_more(embedder):
    """The shutdown timeout's end: queued requests get the JSON 503 at once, and no batch starts."""
    gate = threading.Event()
    fake = FakeEmbedder(embedder, gate=gate)

    async def scenario():
        async with serving(fake, max_batch_items=1, cache_mb=0, queue_timeout_s=30) as (client, state):
            running = asyncio.ensure_future(client.post("/embed", json={"inputs": "hello"}))
            await asyncio.to_thread(fake.running.wait, 10)
            queued = [asyncio.ensure_future(client.post("/v1/embeddings", json={"input": t, "model": "jobbert"}))
                      for t in texts_of(5, seed=4)]
            while state.batcher.queued < 5:
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            state.abort()
            answers = await asyncio.gather(*queued)
            answered_in = time.perf_counter() - started
            gate.set()
            late = await client.post("/embed", json={"inputs": "nurse"})
            return await running, answers, answered_in, late

    first, answers, answered_in, late = run(scenario())
    assert first.status_code == 200  # the batch that was running finished
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "shutting_down"
    assert answered_in < 2
    assert late.status_code == 503 and late.json()["error_type"] == "Unhealthy"
    assert fake.computed == ["hello"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_after_large_requests_returns_near_its_start(exported):
    """Texts that are tokenized whole leave the tokenizer's buffers behind. Before: each request of
    40 such texts (1.9 MB) held 150+ MB more for good; now they are tokenized a few at a time and the
    freed memory is handed back."""
    artifact = exported("jobbert_asym_model", "fp32")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    process = subprocess.Popen(
        [sys.executable, "-m", "jobbert_onnx.serve", str(artifact), "--port", str(port), "--log-level", "warning",
         "--cache-mb", "0", "--max-body-bytes", "20000000"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.1)
        httpx.post(f"{url}/embed", json={"inputs": ["nurse"]}, timeout=30)
        before = _rss_mb(process.pid)
        for r in range(3):
            texts = [("a\u0301\u0302" * 16_000) + f" {r} {i}" for i in range(40)]  # no cut rule applies
            route = "/tokenize" if r == 1 else "/embed"
            response = httpx.post(f"{url}{route}", json={"inputs": texts}, timeout=120)
            assert response.status_code == 200, response.text[:300]
        after = _rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    print(f"RSS {before:.0f} -> {after:.0f} MB")
    assert after - before < 60, f"RSS {before:.0f} -> {after:.0f} MB"


def test_shutdown_ends_on_time_with_json_503s(artifact):
    """`--shutdown-timeout 1` with 6 s of queued work and a 30 s queue timeout: the queued requests get
    the JSON 503 soon after the timeout, nothing more is computed, and the process exits 0. Before,
    uvicorn cancelled them (a plain 500 and a traceback) and the model ran every queued text."""
    args = ["-m", "tests.serve_fakes", str(artifact), "0.2", "--drain-seconds", "0", "--shutdown-timeout", "1",
            "--queue-timeout", "30", "--max-batch-items", "1"]
    with server_process(args) as (process, url):

        async def load():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                posts = [asyncio.ensure_future(client.post("/embed", json={"inputs": [t]}))
                         for t in texts_of(30, seed=12)]
                await asyncio.sleep(0.5)  # all queued, a few computed
                process.send_signal(signal.SIGTERM)
                signalled = time.perf_counter()
                answers = await asyncio.gather(*posts, return_exceptions=True)
                return answers, time.perf_counter() - signalled

        answers, answered_in = asyncio.run(load())
        signalled = time.perf_counter() - answered_in
        code = process.wait(30)
        exited_in = time.perf_counter() - signalled
        log = process.stdout.read()
    statuses = [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]
    assert set(statuses) == {200, 503}, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["error_type"] == "Unhealthy"
    assert code == 0, log
    assert "Traceback" not in log and "Cancel" not in log, log
    assert answered_in < 4, f"answered {answered_in:.1f} s after SIGTERM"
    assert exited_in < 5, f"exited {exited_in:.1f} s after SIGTERM"
    assert statuses.count(200) < 15  # the queued texts were not all computed
