"""The public `Embedder` API beyond `encode` (toy artifact, no torch): `encode_pooled` and
`apply_head`, which let a server run the encoder once for a batch that mixes heads, and
`tokenize` / `token_counts`, which let callers (and tests) see the tokens without private attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from . import toy_artifact as toy
from jobbert_onnx import Embedder
from jobbert_onnx.runtime import UnknownHeadError

TEXTS = ["Senior Python developer", "nurse", "Data engineer in the care sector", "HELLO world", "  java   ", "",
         "red red red red", "python " * 30]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "io-binding"])
def embedder(request: pytest.FixtureRequest, artifact: Path) -> Embedder:
    # io_binding=True runs the CUDA code path (OrtValues between graphs) on the CPU.
    return Embedder(artifact, io_binding=request.param)


def pooled_reference(text: str) -> np.ndarray:
    """The toy model's pooled vector (before any head), in numpy."""
    ids = np.array(toy.reference_ids(text))
    tok = toy.EMBEDDINGS[ids].astype(np.float64)
    return (tok + toy.POSITION_EMBEDDINGS[: len(ids)] + tok.mean(axis=0)).mean(axis=0)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
@pytest.mark.parametrize("head", ["anchor", "positive"])
@pytest.mark.parametrize("normalize", [False, True])
def test_encode_is_apply_head_of_encode_pooled(embedder: Embedder, batch_size: int, head: str, normalize: bool) -> None:
    pooled = embedder.encode_pooled(TEXTS, batch_size=batch_size)
    np.testing.assert_array_equal(embedder.encode(TEXTS, head=head, batch_size=batch_size, normalize=normalize),
                                  embedder.apply_head(pooled, head, normalize=normalize))


def test_encode_pooled_matches_numpy_reference(embedder: Embedder) -> None:
    pooled = embedder.encode_pooled(TEXTS, batch_size=3)
    assert pooled.dtype == np.float32 and pooled.shape == (len(TEXTS), embedder.pooled_dimension)
    np.testing.assert_allclose(pooled, np.stack([pooled_reference(t) for t in TEXTS]), atol=1e-5)


def test_mixed_heads_run_the_encoder_once(embedder: Embedder) -> None:
    # What the server does with a batch that mixes heads: pool once, then each head on its rows.
    heads = ["anchor", "positive", "anchor", "positive", "positive", "anchor", "anchor", "positive"]
    pooled = embedder.encode_pooled(TEXTS)
    for head in ("anchor", "positive"):
        rows = [i for i, h in enumerate(heads) if h == head]
        np.testing.assert_allclose(embedder.apply_head(pooled[rows], head),
                                   embedder.encode([TEXTS[i] for i in rows], head=head), atol=1e-6)


def test_apply_head_on_many_rows(embedder: Embedder) -> None:
    pooled = np.random.default_rng(0).normal(size=(2500, embedder.pooled_dimension)).astype(np.float32)
    out = embedder.apply_head(pooled, "positive")
    assert out.shape == (2500, embedder.dimension("positive")) and out.dtype == np.float32
    expected = np.tanh(pooled.astype(np.float64) @ toy.HEAD_WEIGHTS["positive"])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_apply_head_refuses_bad_input(embedder: Embedder) -> None:
    pooled = embedder.encode_pooled(["nurse"])
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        embedder.apply_head(pooled[:, :5])
    with pytest.raises(ValueError, match="shape"):
        embedder.apply_head(pooled[0])
    with pytest.raises(UnknownHeadError, match="'query'"):
        embedder.apply_head(pooled, "query")
    empty = embedder.apply_head(np.zeros((0, embedder.pooled_dimension)), "positive")
    assert empty.shape == (0, 5) and empty.dtype == np.float32


def test_encode_pooled_edge_cases(embedder: Embedder) -> None:
    assert embedder.encode_pooled([]).shape == (0, embedder.pooled_dimension)
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode_pooled(["nurse"], batch_size=0)
    with pytest.raises(TypeError, match=r"texts\[1\] is None"):
        embedder.encode_pooled(["nurse", None])  # type: ignore[list-item]
    np.testing.assert_array_equal(embedder.encode_pooled(t for t in ["nurse", "java"]),
                                  embedder.encode_pooled(["nurse", "java"]))


def test_tokenize(embedder: Embedder) -> None:
    ids = embedder.tokenize(["  HELLO World ", "nurse", "unknown-word", "python " * 50])
    # Stripped, lower-cased, truncated at max_seq_length (10), unpadded: the tokenizer.json's own
    # padding (to 32) and truncation (to 4) are ignored.
    assert ids[:3] == [toy.reference_ids("hello world"), toy.reference_ids("nurse"), toy.reference_ids("unknown-word")]
    assert ids[3] == toy.reference_ids("python " * 50) and len(ids[3]) == toy.MAX_SEQ_LENGTH
    assert embedder.tokenize([]) == []


def test_token_counts(embedder: Embedder) -> None:
    texts = [*TEXTS, "python " * 5000, "a\ud800b"]
    counts = embedder.token_counts(texts)
    assert counts.dtype == np.int64
    assert counts.tolist() == [len(ids) for ids in embedder.tokenize(texts)]
    assert counts.max() == toy.MAX_SEQ_LENGTH
    with pytest.raises(TypeError, match="list"):
        embedder.token_counts("nurse")
