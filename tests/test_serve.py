"""The embedding server in process (httpx's ASGI transport): parity with `Embedder.encode`, the
routes, batching limits, status codes and body shapes, overload, auth and metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobbert_onnx.runtime import Embedder

from . import toy_artifact
from .serve_fakes import FakeEmbedder, serving

WORDS = toy_artifact.WORDS


def texts_of(count: int, seed: int = 0, words: tuple[int, int] = (1, 12)) -> list[str]:
    """Distinct toy texts of `words` words (the toy model keeps 8 words between [CLS] and [SEP])."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < count:
        text = " ".join(rng.choice(WORDS, size=rng.integers(words[0], words[1] + 1)))
        if text not in out:
            out.append(text)
    return out


def run(coro):
    return asyncio.run(coro)


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """Samples of a /metrics page: (name, sorted labels) -> value. Parsing it is part of the test."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# -- parity ----------------------------------------------------------------------------------
def test_concurrent_mixed_heads_match_encode_in_order(embedder):
    """Concurrent requests of both dialects and both heads, batched together, each equal to encode([text])."""
    fake = FakeEmbedder(embedder)
    texts = texts_of(24)
    heads = ["anchor", "positive"] * 4  # one per chunk of 3 texts

    async def scenario():
        async with serving(fake, batch_wait_ms=30, max_batch_items=16) as (client, _):
            calls = []
            for n, head in enumerate(heads):
                chunk = texts[3 * n : 3 * n + 3]
                calls.append(client.post("/embed", json={"inputs": chunk, "head": head, "normalize": False}))
                calls.append(client.post("/v1/embeddings", json={"input": chunk, "model": f"jobbert/{head}"}))
            return await asyncio.gather(*calls)

    responses = run(scenario())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for n, head in enumerate(heads):
        chunk = texts[3 * n : 3 * n + 3]
        expected = np.concatenate([embedder.encode([t], head=head) for t in chunk])
        tei = np.array(responses[2 * n].json(), dtype=np.float32)
        np.testing.assert_allclose(tei, expected, rtol=1e-6, atol=1e-6)
        openai = responses[2 * n + 1].json()
        assert [d["index"] for d in openai["data"]] == [0, 1, 2]
        got = np.array([d["embedding"] for d in openai["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, embedder.encode(chunk, head=head, normalize=True), rtol=1e-6, atol=1e-6)
    # the scenario really mixed heads and requests in one batch
    assert any(len(batch) > 3 for batch in fake.batches)
    assert sum(len(b) for b in fake.batches) == 24  # each distinct text ran once, for both dialects


def test_int8_response_is_batch_invariant(exported, job_titles):
    """An int8 title answered from a batch of long titles equals the title encoded alone."""
    embedder = Embedder(exported("jobbert_asym_model", "int8"))
    fake = FakeEmbedder(embedder)
    titles = job_titles[::211][:8]
    longer = sorted(job_titles, key=len)[-24:]

    async def scenario():
        async with serving(fake, batch_wait_ms=50, max_batch_items=32) as (client, _):
            return await asyncio.gather(
                client.post("/embed", json={"inputs": longer, "normalize": False}),
                *[client.post("/embed", json={"inputs": t, "normalize": False}) for t in titles],
            )

    responses = run(scenario())
    assert all(r.status_code == 200 for r in responses)
    assert max(len(b) for b in fake.batches) > 8  # the titles ran beside the long ones
    served = np.array([r.json()[0] for r in responses[1:]], dtype=np.float32)
    alone = np.concatenate([embedder.encode([t], batch_size=1) for t in titles])
    cosine = (served * alone).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(alone, axis=1)
    assert cosine.min() >= 0.9999


def test_base64_decodes_exactly_to_the_float_output(embedder):
    texts = texts_of(5, seed=1)

    async def scenario():
        async with serving(embedder, cache_mb=0) as (client, _):
            floats = await client.post("/v1/embeddings", json={"input": texts, "model": "jobbert"})
            packed = await client.post("/v1/embeddings", json={"input": texts, "model": "jobbert", "encoding_format": "base64"})
            return floats.json(), packed.json()

    floats, packed = run(scenario())
    as_floats = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]])
    assert decoded.shape == (5, toy_artifact.HEAD_DIMS["anchor"])
    assert np.array_equal(decoded, as_floats)
    assert np.array_equal(decoded, embedder.encode(texts, normalize=True))


def test_usage_counts_real_tokens(embedder):
    texts = ["hello", "senior python developer", " ".join(WORDS), ""]  # the third is truncated

    async def scenario():
        async with serving(embedder) as (client, _):
            first = await client.post("/v1/embeddings", json={"input": texts, "model": "jobbert"})
            again = await client.post("/v1/embeddings", json={"input": texts, "model": "jobbert"})  # from the cache
            return first.json()["usage"], again.json()["usage"], first.headers

    usage, cached, headers = run(scenario())
    expected = int(embedder.token_counts(texts).sum())
    assert expected == sum(len(toy_artifact.reference_ids(t)) for t in texts)
    assert usage == cached == {"prompt_tokens": expected, "total_tokens": expected}
    assert int(headers["x-compute-tokens"]) == expected
    for name in ("x-total-time", "x-queue-time", "x-inference-time", "x-tokenization-time"):
        assert float(headers[name]) >= 0


def test_tokenize_info_models_and_similarity(embedder):
    async def scenario():
        async with serving(embedder) as (client, _):
            return (
                await client.post("/tokenize", json={"inputs": ["Senior Nurse", " ".join(WORDS)]}),
                await client.get("/info"),
                await client.get("/v1/models"),
                await client.post("/similarity", json={
                    "source": ["senior nurse", "java developer"], "target": ["care", "python java", "data"],
                }),
                await client.get("/health"),
                await client.get("/ready"),
            )

    tokenized, info, models, sim, health, ready = run(scenario())
    assert tokenized.json() == [
        {"ids": toy_artifact.reference_ids("Senior Nurse"), "count": 4},
        {"ids": toy_artifact.reference_ids(" ".join(WORDS)), "count": toy_artifact.MAX_SEQ_LENGTH},
    ]
    info = info.json()
    assert info["heads"] == toy_artifact.HEAD_DIMS and info["default_head"] == "anchor"
    assert info["max_seq_length"] == toy_artifact.MAX_SEQ_LENGTH and info["precision"] == "fp32"
    assert len(info["sha256"]) == 64 and info["limits"]["max_batch_items"] == 32 and info["limits"]["cache_mb"] == 64
    assert [m["id"] for m in models.json()["data"]] == ["jobbert", "jobbert/anchor", "jobbert/positive"]
    source = embedder.encode(["senior nurse", "java developer"])
    target = embedder.encode(["care", "python java", "data"])
    expected = (source / np.linalg.norm(source, axis=1, keepdims=True)) @ (target / np.linalg.norm(target, axis=1, keepdims=True)).T
    np.testing.assert_allclose(np.array(sim.json()), expected, atol=1e-6)
    assert health.json() == {"status": "ok"} and ready.json() == {"status": "ready"}


# -- batching ----------------------------------------------------------------------------------
def test_batches_never_exceed_item_and_token_limits(embedder):
    fake = FakeEmbedder(embedder)
    # short texts (3-5 tokens) fill batches by count, long ones (10 tokens) by padded tokens
    texts = texts_of(32, seed=2, words=(1, 3)) + texts_of(28, seed=3, words=(9, 12))
    max_items, max_tokens = 5, 30

    async def scenario():
        async with serving(fake, batch_wait_ms=20, max_batch_items=max_items, max_batch_tokens=max_tokens) as (client, _):
            return await asyncio.gather(*[client.post("/embed", json={"inputs": texts[i : i + 4]}) for i in range(0, 60, 4)])

    responses = run(scenario())
    assert all(r.status_code == 200 for r in responses)
    assert sorted(fake.computed) == sorted(texts)
    for tokens in fake.batch_tokens:
        assert len(tokens) <= max_items
        assert len(tokens) * max(tokens) <= max_tokens
    # both limits were reached, so the bound was tested rather than never approached
    assert any(len(t) == max_items for t in fake.batch_tokens)
    assert any(len(t) < max_items and (len(t) + 1) * max(t) > max_tokens for t in fake.batch_tokens)


@pytest.mark.parametrize(("items", "tokens", "rows"), [(32, 16_384, 32), (8, 25, 2), (3, 10_000, 3)])
def test_warm_up_runs_the_largest_batch_the_limits_allow(embedder, items, tokens, rows):
    # So that onnxruntime's arena and the allocator reach their peak before /ready, not in a burst
    # later (bench/results/serve.md, soak); the token limit caps the rows at full length.
    fake = FakeEmbedder(embedder)
    run(_start(fake, max_batch_items=items, max_batch_tokens=tokens))
    assert fake.warm_up_tokens == [toy_artifact.MAX_SEQ_LENGTH] * rows


async def _start(fake, **limits):
    async with serving(fake, **limits):
        pass


def test_identical_queued_texts_share_one_computation(embedder):
    gate = threading.Event()
    fake = FakeEmbedder(embedder, gate=gate)

    async def scenario():
        async with serving(fake, cache_mb=0) as (client, state):
            blocker = asyncio.ensure_future(client.post("/embed", json={"inputs": "hello"}))
            await asyncio.to_thread(fake.running.wait, 10)  # the worker is busy with "hello"
            same = [asyncio.ensure_future(client.post("/embed", json={"inputs": ["nurse", "care"]})) for _ in range(3)]
            await asyncio.sleep(0.2)
            gate.set()
            results = await asyncio.gather(blocker, *same)
            return results, (await client.get("/metrics")).text

    results, metrics = run(scenario())
    assert [r.status_code for r in results] == [200] * 4
    assert sorted(fake.computed) == ["care", "hello", "nurse"]
    assert results[1].json() == results[2].json() == results[3].json()
    assert scrape(metrics)[("jobbert_onnx_shared_items_total", ())] == 4


def test_queued_texts_of_a_gone_client_are_dropped_unrun(embedder):
    """A raw ASGI call whose client disconnects right after sending: its text never reaches the model."""
    gate = threading.Event()
    fake = FakeEmbedder(embedder, gate=gate)

    async def scenario():
        async with serving(fake) as (client, state):
            blocker = asyncio.ensure_future(client.post("/embed", json={"inputs": "hello"}))
            await asyncio.to_thread(fake.running.wait, 10)
            body = json.dumps({"inputs": ["nurse data"]}).encode()
            messages = iter([{"type": "http.request", "body": body, "more_body": False}])

            async def receive():
                message = next(messages, None)
                if message is not None:
                    return message
                await asyncio.sleep(0.1)  # let the text be queued first
                return {"type": "http.disconnect"}

            sent = []

            async def send(message):
                sent.append(message)

            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                "path": "/embed", "raw_path": b"/embed", "query_string": b"", "root_path": "",
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                "client": ("127.0.0.1", 1), "server": ("test", 80),
            }
            app = client._transport.app
            await app(scope, receive, send)
            queued_after = state.batcher.queued
            gate.set()
            await blocker
            return sent, queued_after, (await client.get("/metrics")).text

    sent, queued_after, metrics = run(scenario())
    assert queued_after == 0
    assert fake.computed == ["hello"]
    assert sent[0]["status"] == 499
    samples = scrape(metrics)
    assert samples[("jobbert_onnx_dropped_items_total", (("reason", "client_gone"),))] == 1


def test_queue_timeout_drops_the_text_and_answers_503(embedder):
    gate = threading.Event()
    fake = FakeEmbedder(embedder, gate=gate)

    async def scenario():
        async with serving(fake, queue_timeout_s=0.3) as (client, _):
            blocker = asyncio.ensure_future(client.post("/embed", json={"inputs": "hello"}))
            await asyncio.to_thread(fake.running.wait, 10)
            late = await client.post("/v1/embeddings", json={"input": "nurse", "model": "jobbert"})
            gate.set()
            await blocker
            return late, scrape((await client.get("/metrics")).text)

    late, metrics = run(scenario())
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    assert late.json()["error"]["code"] == "queue_timeout"
    assert fake.computed == ["hello"]
    assert metrics[("jobbert_onnx_dropped_items_total", (("reason", "queue_timeout"),))] == 1
    assert metrics[("jobbert_onnx_rejections_total", (("reason", "queue_timeout"),))] == 1


def test_full_queue_answers_429_then_recovers(embedder):
    fake = FakeEmbedder(embedder, delay=0.15)

    async def scenario():
        async with serving(fake, max_queue_items=2, max_inputs=2, max_batch_items=1, cache_mb=0) as (client, _):
            burst = await asyncio.gather(*[client.post("/embed", json={"inputs": [f"nurse {w}"]}) for w in WORDS[:8]])
            after = await client.post("/embed", json={"inputs": ["senior data engineer"]})
            return burst, after, (await client.get("/metrics")).text

    burst, after, metrics = run(scenario())
    statuses = [r.status_code for r in burst]
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
    rejected = [r for r in burst if r.status_code == 429]
    for r in rejected:
        assert r.headers["retry-after"] == "1"
        assert r.json()["error_type"] == "Overloaded" and "--max-queue-items 2" in r.json()["error"]
    assert after.status_code == 200  # the queue drained: the server recovered
    samples = scrape(metrics)
    assert samples[("jobbert_onnx_rejections_total", (("reason", "queue_full"),))] == len(rejected)
    assert samples[("jobbert_onnx_requests_total", (("route", "/embed"), ("status", "429")))] == len(rejected)


def test_overload_is_refused_by_estimated_wait_before_anything_times_out(embedder):
    """At 10 full-length texts/s and a 1 s queue timeout, a burst of 30 gets 429s at once, not 503s later."""
    fake = FakeEmbedder(embedder, delay=0.1)
    full_length = texts_of(30, words=(12, 16))  # truncated to max_seq_length, as the warm-up's texts
    max_seq_length = embedder.manifest.tokenizer.max_seq_length

    async def scenario():
        async with serving(fake, max_batch_items=1, queue_timeout_s=1.0, cache_mb=0) as (client, state):
            rate = state.batcher.rate
            burst = await asyncio.gather(*[client.post("/embed", json={"inputs": t}) for t in full_length])
            return rate, burst

    rate, burst = run(scenario())
    assert 5 < rate / max_seq_length < 11  # the warm-up's estimate, in tokens/s: one 0.1 s batch
    statuses = [r.status_code for r in burst]
    assert set(statuses) == {200, 429}, statuses
    assert 3 <= statuses.count(200) <= 10  # about half a second of work was admitted
    rejected = next(r for r in burst if r.status_code == 429)
    assert "would not run within --queue-timeout 1 s" in rejected.json()["error"]
    assert rejected.headers["retry-after"] == "1"


def test_wait_estimate_comes_from_full_batches_only(embedder):
    """Batches of one (a lightly loaded server) run slower per text than the full batches a backlog
    drains in; they must not lower the throughput estimate that decides 429s."""
    fake = FakeEmbedder(embedder, delay=0.05)

    async def scenario():
        async with serving(fake, max_batch_items=4, cache_mb=0) as (client, state):
            warm = state.batcher.rate
            for i in range(5):
                assert (await client.post("/embed", json={"inputs": f"nurse {i}"})).status_code == 200
            after_singles = state.batcher.rate
            burst = await asyncio.gather(*[client.post("/embed", json={"inputs": t}) for t in texts_of(12, seed=3)])
            return warm, after_singles, state.batcher.rate, burst, list(fake.batches)

    warm, after_singles, after_burst, burst, batches = run(scenario())
    assert 40 < warm / embedder.manifest.tokenizer.max_seq_length < 81  # the warm-up: 4 full-length texts in 0.05 s
    assert after_singles == warm  # five batches of one changed nothing
    assert all(r.status_code == 200 for r in burst)
    assert any(len(b) == 4 for b in batches) and after_burst != warm  # full batches update it


# -- status codes and body shapes ------------------------------------------------------------------
def tei_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and isinstance(body["error"], str)
    return body["error"]


def openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_400_malformed_json_and_empty_lists(embedder):
    async def scenario():
        async with serving(embedder) as (client, _):
            return [
                await client.post("/embed", content=b'{"inputs": ["a"'),
                await client.post("/v1/embeddings", content=b"not json"),
                await client.post("/embed", json={"inputs": []}),
                await client.post("/v1/embeddings", json={"input": [], "model": "jobbert"}),
                await client.post("/embed", json=["hello"]),
                await client.post("/embed", content=b""),
                await client.post("/embed", content=b'{"inputs": "\xff"}'),
            ]

    bad_json, bad_openai, empty, empty_openai, not_object, no_body, bad_utf8 = run(scenario())
    assert "malformed JSON" in tei_error(bad_json, 400)
    assert openai_error(bad_openai, 400)["code"] == "invalid_json"
    assert "empty list" in tei_error(empty, 400)
    assert openai_error(empty_openai, 400)["param"] == "input"
    assert "JSON object" in tei_error(not_object, 400)
    tei_error(no_body, 400)
    tei_error(bad_utf8, 400)


def test_413_body_inputs_and_text_length(embedder):
    async def scenario():
        async with serving(embedder, max_body_bytes=1000, max_inputs=3, max_chars=20) as (client, _):

            async def chunks():  # no Content-Length: the limit must hold while streaming
                for _ in range(100):
                    yield b" " * 100

            return [
                await client.post("/embed", json={"inputs": ["x" * 10] * 100}),
                await client.post("/embed", content=chunks()),
                await client.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"], "model": "jobbert"}),
                await client.post("/embed", json={"inputs": ["short", "y" * 21]}),
                await client.post("/similarity", json={"source": ["a", "b"], "target": ["c", "d"]}),
            ]

    declared, streamed, inputs, chars, similarity = run(scenario())
    assert "--max-body-bytes" in tei_error(declared, 413)
    assert "--max-body-bytes" in tei_error(streamed, 413)
    error = openai_error(inputs, 413)
    assert error["code"] == "too_many_inputs" and "--max-inputs" in error["message"]
    assert "inputs[1]" in tei_error(chars, 413) and "--max-chars" in tei_error(chars, 413)
    assert "--max-inputs" in tei_error(similarity, 413)


def test_413_for_a_text_that_is_too_long_to_tokenize_and_cannot_be_cut(embedder):
    # With --max-chars raised past the runtime's limit, a text it cannot cut is refused by name,
    # not tokenized whole (time and memory without bound) and not a 500.
    word = "x" * (1024 * toy_artifact.MAX_SEQ_LENGTH + 1)  # one word: no cut is proven

    async def scenario():
        async with serving(embedder, max_body_bytes=10_000_000, max_chars=1_000_000) as (client, _):
            return [
                await client.post("/embed", json={"inputs": ["nurse", "nurse", word]}),
                await client.post("/v1/embeddings", json={"input": ["nurse", word], "model": "jobbert"}),
                await client.post("/tokenize", json={"inputs": ["nurse", word]}),
                await client.post("/embed", json={"inputs": ["nurse", word[:-1]]}),
            ]

    embed, openai, tokenize, at_limit = run(scenario())
    assert tei_error(embed, 413).startswith(f"input 2: a text of {len(word):,} characters cannot be embedded")
    assert openai_error(openai, 413)["code"] == "text_too_long"
    assert tei_error(tokenize, 413).startswith("input 1: ")
    assert at_limit.status_code == 200 and len(at_limit.json()) == 2


@pytest.mark.parametrize(
    ("route", "body", "param", "needle"),
    [
        ("/embed", {"inputs": "a", "head": "nope"}, "head", "anchor, positive"),
        ("/embed", {"inputs": 3}, "inputs", "string"),
        ("/embed", {"inputs": ["a", None]}, "inputs", "inputs[1]"),
        ("/embed", {"inputs": [[1, 2, 3]]}, "inputs", "Token ids"),
        ("/embed", {"inputs": "a", "normalize": "yes"}, "normalize", "true or false"),
        ("/embed", {"inputs": "a", "truncate": False}, "truncate", "always cut"),
        ("/embed", {"inputs": "a", "truncation_direction": "Left"}, "truncation_direction", "right"),
        ("/embed", {"inputs": "a", "dimensions": 3}, "dimensions", "outputs 6"),
        ("/embed", {"inputs": "a", "prompt_name": "query"}, "prompt_name", "prompts: none"),
        ("/embed", {"input": "a"}, "input", "unknown field"),
        ("/v1/embeddings", {"input": "a", "model": "gpt-4"}, "model", "jobbert/positive"),
        ("/v1/embeddings", {"input": "a", "model": "jobbert/nope"}, "model", "unknown model"),
        ("/v1/embeddings", {"input": "a", "model": "jobbert", "encoding_format": "int8"}, "encoding_format", "base64"),
        ("/v1/embeddings", {"input": "a", "model": "jobbert/positive", "dimensions": 6}, "dimensions", "outputs 5"),
        ("/v1/embeddings", {"input": "a", "model": "jobbert/anchor", "head": "positive"}, "head", "send one"),
        ("/v1/embeddings", {"input": [1, 2], "model": "jobbert"}, "input", "Token ids"),
        ("/similarity", {"source": ["a"], "target": ["b"], "target_head": "positive"}, "target_head", "different sizes"),
        ("/tokenize", {"inputs": "a", "add_special_tokens": False}, "add_special_tokens", "not supported"),
    ],
)
def test_422_unknown_heads_models_wrong_types_and_unsupported_values(embedder, route, body, param, needle):
    async def scenario():
        async with serving(embedder) as (client, _):
            return await client.post(route, json=body)

    response = run(scenario())
    if route.startswith("/v1/"):
        error = openai_error(response, 422)
        assert error["param"] == param and error["type"] == "invalid_request_error"
        assert needle in error["message"]
    else:
        assert needle in tei_error(response, 422)


def test_accepted_optional_fields(embedder):
    async def scenario():
        async with serving(embedder) as (client, _):
            return [
                await client.post("/embed", json={"inputs": "a", "truncate": True, "truncation_direction": "right",
                                                  "dimensions": 6, "normalize": None}),
                await client.post("/v1/embeddings", json={"input": "a", "model": "jobbert", "head": "positive",
                                                          "dimensions": 5, "user": "u1", "encoding_format": None}),
                await client.post("/embeddings", json={"input": "a", "model": "jobbert/positive"}),
            ]

    tei, openai, bare = run(scenario())
    assert tei.status_code == 200 and len(tei.json()[0]) == 6
    assert openai.status_code == 200 and len(openai.json()["data"][0]["embedding"]) == 5
    assert bare.status_code == 200 and bare.json()["model"] == "jobbert/positive"


def test_404_and_405_have_the_route_s_body_shape(embedder):
    async def scenario():
        async with serving(embedder) as (client, _):
            return await client.get("/nope"), await client.get("/v1/nope"), await client.get("/embed")

    missing, missing_v1, wrong_method = run(scenario())
    tei_error(missing, 404)
    openai_error(missing_v1, 404)
    tei_error(wrong_method, 405)


def test_500_is_logged_with_a_request_id(embedder, caplog):
    fake = FakeEmbedder(embedder, fail_on="boom")

    async def scenario():
        async with serving(fake, cache_mb=0) as (client, _):
            failed = await client.post("/v1/embeddings", json={"input": ["fine", "boom"], "model": "jobbert"},
                                       headers={"x-request-id": "req-42"})
            after = await client.post("/embed", json={"inputs": "fine"})
            return failed, after

    with caplog.at_level(logging.ERROR, logger="jobbert_onnx.serve"):
        failed, after = run(scenario())
    error = openai_error(failed, 500)
    assert "req-42" in error["message"] and failed.headers["x-request-id"] == "req-42"
    assert any("req-42" in r.getMessage() for r in caplog.records)
    assert after.status_code == 200  # one failed batch does not break the server


def test_503_while_warming_up_and_while_draining(embedder):
    gate = threading.Event()
    fake = FakeEmbedder(embedder, gate=gate, gate_warm_up=True)
    from jobbert_onnx.serve import Limits, ServerConfig, create_app

    async def scenario():
        app = create_app(fake, ServerConfig(limits=Limits()))
        state = app.state.server
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                loading = [await client.get("/ready"), await client.post("/embed", json={"inputs": "a"}),
                           await client.get("/health")]
                gate.set()
                await asyncio.to_thread(state.batcher.ready.wait, 10)
                ready = await client.get("/ready")
                state.draining = True
                draining = [await client.get("/ready"), await client.post("/v1/embeddings", json={"input": "a", "model": "jobbert"})]
                return loading, ready, draining

    (ready_loading, embed_loading, health), ready, (ready_draining, embed_draining) = run(scenario())
    assert ready_loading.status_code == 503 and ready_loading.json() == {"status": "loading"}
    assert "warming up" in tei_error(embed_loading, 503) and embed_loading.headers["retry-after"] == "1"
    assert health.status_code == 200
    assert ready.status_code == 200
    assert ready_draining.status_code == 503 and ready_draining.json() == {"status": "draining"}
    assert openai_error(embed_draining, 503)["code"] == "draining"


# -- auth ----------------------------------------------------------------------------------------------
def test_auth_on_and_off(embedder):
    async def scenario(key):
        async with serving(embedder, api_key=key) as (client, _):
            out = {}
            for name, headers in [("none", {}), ("wrong", {"Authorization": "Bearer nope"}),
                                  ("right", {"Authorization": "Bearer s3cret"}), ("scheme", {"Authorization": "Basic s3cret"})]:
                out[name] = [
                    await client.post("/embed", json={"inputs": "a"}, headers=headers),
                    await client.post("/v1/embeddings", json={"input": "a", "model": "jobbert"}, headers=headers),
                    await client.get("/info", headers=headers),
                ]
            out["open"] = [await client.get(p) for p in ("/health", "/ready", "/metrics")]
            return out

    on = run(scenario("s3cret"))
    for name in ("none", "wrong", "scheme"):
        tei, openai, info = on[name]
        assert "Bearer" in tei_error(tei, 401) and tei.headers["www-authenticate"] == "Bearer"
        assert openai_error(openai, 401)["code"] == "invalid_api_key"
        assert info.status_code == 401
    assert [r.status_code for r in on["right"]] == [200, 200, 200]
    assert [r.status_code for r in on["open"]] == [200, 200, 200]
    off = run(scenario(None))
    assert all(r.status_code == 200 for name in ("none", "wrong", "right") for r in off[name])


def test_api_key_sources(tmp_path, monkeypatch):
    import argparse

    from jobbert_onnx.runtime.errors import JobbertOnnxError
    from jobbert_onnx.serve.cli import api_key

    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("JOBBERT_ONNX_API_KEY", "from-env")
    assert api_key(argparse.Namespace(api_key="from-flag", api_key_file=None)) == "from-flag"
    assert api_key(argparse.Namespace(api_key=None, api_key_file=str(key_file))) == "from-file"
    assert api_key(argparse.Namespace(api_key=None, api_key_file=None)) == "from-env"
    monkeypatch.delenv("JOBBERT_ONNX_API_KEY")
    assert api_key(argparse.Namespace(api_key=None, api_key_file=None)) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(JobbertOnnxError, match="empty"):
        api_key(argparse.Namespace(api_key=None, api_key_file=str(tmp_path / "empty")))


# -- cache and metrics -----------------------------------------------------------------------------------
def test_cache_hit_returns_the_fresh_vector_and_metrics_move(embedder):
    fake = FakeEmbedder(embedder)
    texts = ["senior nurse", "java developer"]

    async def scenario():
        async with serving(fake) as (client, _):
            before = scrape((await client.get("/metrics")).text)
            fresh = await client.post("/embed", json={"inputs": texts, "normalize": False})
            hit = await client.post("/embed", json={"inputs": ["  senior nurse ", "java developer"], "normalize": False})
            other_head = await client.post("/embed", json={"inputs": ["senior nurse"], "head": "positive", "normalize": False})
            after = scrape((await client.get("/metrics")).text)
            return before, fresh, hit, other_head, after

    before, fresh, hit, other_head, after = run(scenario())
    assert fresh.json() == hit.json()
    np.testing.assert_array_equal(np.array(hit.json(), dtype=np.float32), embedder.encode(texts))
    # the stripped text hit the cache; the other head is its own entry
    assert fake.computed == ["senior nurse", "java developer", "senior nurse"]
    assert float(hit.headers["x-inference-time"]) == 0.0
    np.testing.assert_allclose(other_head.json(), embedder.encode(["senior nurse"], head="positive"), rtol=1e-6)

    def moved(name, labels=()):
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert moved("jobbert_onnx_cache_hits_total") == 2
    assert moved("jobbert_onnx_cache_misses_total") == 3
    assert after[("jobbert_onnx_cache_entries", ())] == 3
    assert after[("jobbert_onnx_cache_bytes", ())] > 3 * 6 * 4
    assert moved("jobbert_onnx_requests_total", (("route", "/embed"), ("status", "200"))) == 3
    assert moved("jobbert_onnx_request_duration_seconds_count", (("route", "/embed"), ("status", "200"))) == 3
    assert moved("jobbert_onnx_batch_items_count") == 2  # two batches ran (the hit ran none)
    assert moved("jobbert_onnx_batch_items_sum") == 3
    assert moved("jobbert_onnx_queue_wait_seconds_count") == 3
    assert moved("jobbert_onnx_inference_seconds_count") == 2
    tokens = int(embedder.token_counts(texts).sum())
    assert moved("jobbert_onnx_tokens_total", (("head", "anchor"),)) == tokens
    assert moved("jobbert_onnx_tokens_total", (("head", "positive"),)) == int(embedder.token_counts(["senior nurse"])[0])
    assert after[("jobbert_onnx_queue_depth", ())] == 0 and after[("jobbert_onnx_ready", ())] == 1


def test_cache_evicts_least_recently_used_through_the_server(embedder):
    from jobbert_onnx.runtime.cache import ENTRY_OVERHEAD

    fake = FakeEmbedder(embedder)
    entry = 32 + 6 * 4 + ENTRY_OVERHEAD  # key + anchor vector + overhead

    async def scenario():
        async with serving(fake, cache_mb=(3 * entry + 0.5) / 2**20) as (client, state):
            for text in ("nurse", "care", "data"):
                await client.post("/embed", json={"inputs": text})
            await client.post("/embed", json={"inputs": "nurse"})  # "care" is now the least recently used
            await client.post("/embed", json={"inputs": "java"})  # evicts "care"
            await client.post("/embed", json={"inputs": ["nurse", "data", "care"]})
            return len(state.cache), state.cache.bytes, scrape((await client.get("/metrics")).text)

    entries, used, metrics = run(scenario())
    assert fake.computed == ["nurse", "care", "data", "java", "care"]
    assert entries == 3 and used <= 3 * entry
    assert metrics[("jobbert_onnx_cache_evictions_total", ())] == 2


def test_prompt_name_is_prepended_counted_and_cached_apart(tmp_path):
    from jobbert_onnx.runtime import Manifest

    folder = toy_artifact.build(tmp_path / "toy")
    manifest = Manifest.load(folder)
    manifest.prompts = {"query": "senior "}
    manifest.save(folder)
    embedder = Embedder(folder)

    async def scenario():
        async with serving(embedder) as (client, _):
            plain = await client.post("/embed", json={"inputs": "nurse", "normalize": False})
            prompted = await client.post("/v1/embeddings", json={"input": ["nurse"], "model": "jobbert",
                                                                 "prompt_name": "query", "normalize": False})
            return plain, prompted, await client.get("/info")

    plain, prompted, info = run(scenario())
    np.testing.assert_allclose(plain.json(), embedder.encode(["nurse"]), rtol=1e-6)
    vector = np.array([prompted.json()["data"][0]["embedding"]], dtype=np.float32)
    np.testing.assert_allclose(vector, embedder.encode(["nurse"], prompt_name="query"), rtol=1e-6)
    np.testing.assert_allclose(vector, embedder.encode(["senior nurse"]), rtol=1e-6)
    assert not np.allclose(vector, plain.json())  # not served from the prompt-less cache entry
    assert prompted.json()["usage"]["prompt_tokens"] == 4  # [CLS] senior nurse [SEP]
    assert info.json()["prompts"] == ["query"]


def test_cli_errors_are_one_line(artifact, capsys):
    from jobbert_onnx.serve.cli import main

    assert main([str(artifact.parent / "missing")]) == 1
    assert main([str(artifact), "--max-batch-tokens", "5"]) == 1
    assert main([str(artifact), "--max-inputs", "2000"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("jobbert-onnx: error: ") for line in lines)
    assert "missing" in lines[0]
    assert "--max-batch-tokens 5" in lines[1] and "max_seq_length 10" in lines[1]
    assert "--max-queue-items" in lines[2]
