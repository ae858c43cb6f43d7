"""export/fusion.py: the fused fp32 encoder computes what the exported one does, keeps every
weight MatMul for the int8 pass, and the int8 graph built on it stays batch invariant."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from jobbert_onnx.export.fusion import fuse_encoder
from jobbert_onnx.export import int8
from jobbert_onnx.export.precision import Int8Options
from jobbert_onnx.runtime.manifest import Manifest
from jobbert_onnx.runtime.tokenization import TextTokenizer

from tests.fixtures.models import HIDDEN_SIZE, NUM_HEADS, NUM_LAYERS
from tests.reference import cosine_rows

pytestmark = pytest.mark.full  # imports torch (tests.fixtures.models)


def _encode(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hidden = session.run(None, feed)[0]
    mask = feed["attention_mask"][..., None].astype(np.float32)
    return (hidden * mask).sum(1) / mask.sum(1)


def _feed(artifact, texts: list[str]) -> dict[str, np.ndarray]:
    manifest = Manifest.load(artifact)
    tokens = TextTokenizer.from_file(artifact / "tokenizer.json", manifest.tokenizer)(texts)
    return {name: tokens[name] for name in manifest.encoder.input_names}


def test_fused_encoder_matches_and_keeps_the_weight_matmuls(exported, job_titles):
    artifact = exported("jobbert_asym_model", "fp32")
    plain = onnx.load(str(artifact / "encoder.onnx"))
    fused, counts = fuse_encoder(onnx.load(str(artifact / "encoder.onnx")), NUM_HEADS, HIDDEN_SIZE)
    assert counts == {"MultiHeadAttention": NUM_LAYERS, "SkipLayerNormalization": 2 * NUM_LAYERS, "BiasGelu": NUM_LAYERS}
    # Q, K, V, attention output, FFN in and out stay MatMuls that the int8 pass finds.
    assert len(int8.quantizable_matmuls(fused)) == len(int8.quantizable_matmuls(plain)) == 6 * NUM_LAYERS
    feed = _feed(artifact, job_titles[:24])  # padded: titles of different lengths
    assert cosine_rows(_encode(plain, feed), _encode(fused, feed)).min() > 0.99999


def test_int8_of_the_fused_encoder_is_batch_invariant(exported, job_titles):
    artifact = exported("jobbert_asym_model", "fp32")
    fused, _ = fuse_encoder(onnx.load(str(artifact / "encoder.onnx")), NUM_HEADS, HIDDEN_SIZE)
    quantized, _ = Int8Options().apply(fused, [_feed(artifact, job_titles[:32])])
    longest = sorted(job_titles, key=len)[-7:]
    probe = job_titles[40:48]
    alone = np.concatenate([_encode(quantized, _feed(artifact, [t])) for t in probe])
    batched = np.concatenate([_encode(quantized, _feed(artifact, [*longest, t]))[-1:] for t in probe])
    assert cosine_rows(alone, batched).min() > 0.9999


def test_an_encoder_the_fusion_cannot_handle_is_exported_unfused(tmp_path, monkeypatch):
    """Fusing is an optimization: when it fails, the graph file stays as exported and the
    manifest's record says why, instead of the export failing."""
    from jobbert_onnx.export import fusion

    path = tmp_path / "encoder.onnx"
    path.write_bytes(b"as exported")
    assert fusion.fuse_encoder_file(path, None, 768) == {"fused": False,
                                                        "reason": "config.json has no usable num_attention_heads"}

    def broken(model, num_heads, hidden_size):
        raise ValueError("unexpected pattern")

    monkeypatch.setattr(fusion, "fuse_encoder", broken)
    monkeypatch.setattr(onnx, "load", lambda _: onnx.ModelProto())
    assert fusion.fuse_encoder_file(path, 12, 768) == {"fused": False, "reason": "ValueError: unexpected pattern"}
    assert path.read_bytes() == b"as exported"
