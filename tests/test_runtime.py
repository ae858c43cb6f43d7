"""Fast runtime tests on a toy artifact (see toy_artifact.py); no torch needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from . import toy_artifact as toy
from jobbert_onnx import Embedder, similarity
from jobbert_onnx.runtime import ArtifactError, Manifest, ProviderError, UnknownHeadError, cosine_rows, providers
from jobbert_onnx.runtime.manifest import sha256_of
from jobbert_onnx.runtime.tokenization import TextTokenizer

TEXTS = [
    "Senior Python developer",
    "nurse",
    "Data engineer in the care sector",
    "HELLO world",
    "  java   ",
    "",
    "red red red red",
]


@pytest.fixture
def copy(artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the artifact that a test may damage."""
    return Path(shutil.copytree(artifact, tmp_path / "artifact"))


def reference(texts: list[str], head: str = "anchor") -> np.ndarray:
    return np.stack([toy.reference(t, head) for t in texts])


# -- encoding ---------------------------------------------------------------------------------
def test_description(embedder: Embedder, artifact: Path) -> None:
    assert embedder.heads == ["anchor", "positive"]
    assert embedder.default_head == "anchor"
    assert embedder.dimension() == 6 and embedder.dimension("positive") == 5
    assert embedder.path == artifact
    assert isinstance(embedder.manifest, Manifest)


@pytest.mark.parametrize("head", ["anchor", "positive"])
def test_encode_matches_numpy_reference(embedder: Embedder, head: str) -> None:
    out = embedder.encode(TEXTS, head=head, batch_size=3)
    assert out.dtype == np.float32
    assert out.shape == (len(TEXTS), toy.HEAD_DIMS[head])
    np.testing.assert_allclose(out, reference(TEXTS, head), atol=1e-5)


def test_default_head_is_used(embedder: Embedder) -> None:
    np.testing.assert_array_equal(embedder.encode(TEXTS), embedder.encode(TEXTS, head="anchor"))


def test_order_restored(embedder: Embedder) -> None:
    together = embedder.encode(TEXTS, batch_size=2)
    alone = np.concatenate([embedder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_batch_invariance(embedder: Embedder) -> None:
    short = "nurse"
    batch = ["senior python developer java " * 3, "data engineer care", short]
    inside = embedder.encode(batch, batch_size=len(batch))[2]
    np.testing.assert_allclose(inside, embedder.encode([short])[0], atol=1e-6)


def test_tokenizer_ids(embedder: Embedder, artifact: Path) -> None:
    assert embedder.tokenize(["  HELLO World ", "nurse"]) == [toy.reference_ids("hello world"), toy.reference_ids("nurse")]
    tokenizer = TextTokenizer.from_file(artifact / "tokenizer.json", Manifest.load(artifact).tokenizer)
    tokens = tokenizer(["  HELLO World ", "nurse", "unknown-word"])
    assert tokens["input_ids"].dtype == np.int64
    assert tokens["input_ids"].tolist() == [
        toy.reference_ids("hello world"),
        toy.reference_ids("nurse") + [0],
        toy.reference_ids("unknown-word") + [0],
    ]
    # The tokenizer.json asks for padding to 32 and truncation to 4: both ignored.
    assert tokens["input_ids"].shape == (3, 4)
    assert tokens["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]]
    assert tokens["token_type_ids"].tolist() == [[0] * 4] * 3


def test_token_counts_match_the_token_ids(embedder: Embedder) -> None:
    # Counted as the batch will hold them: lower-cased, stripped, truncated, special tokens in.
    texts = ["  HELLO World ", "nurse", "unknown-word", "python " * 5000, ""]
    counts = embedder.token_counts(texts)
    assert counts.tolist() == [len(ids) for ids in embedder.tokenize(texts)]
    assert counts.max() == Manifest.load(embedder.path).tokenizer.max_seq_length


def test_lowercase_prepended_once(artifact: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.normalizers import Lowercase, Sequence

    spec = Manifest.load(artifact).tokenizer
    raw = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    TextTokenizer(raw, spec)
    first = raw.normalizer
    assert isinstance(first, Sequence) and isinstance(first[0], Lowercase)
    TextTokenizer(raw, spec)  # already lower-cases: left alone, as sentence-transformers does
    assert raw.normalizer.__getstate__() == first.__getstate__()


def test_no_lowercase_when_not_asked(artifact: Path) -> None:
    from dataclasses import replace

    spec = replace(Manifest.load(artifact).tokenizer, do_lower_case=False)
    tokenizer = TextTokenizer.from_file(artifact / "tokenizer.json", spec)
    assert tokenizer(["HELLO hello"])["input_ids"].tolist() == [[2, 1, toy.VOCAB["hello"], 3]]


def test_long_text_truncated(embedder: Embedder) -> None:
    long_text = "python " * 5000
    ids = embedder.tokenize([long_text, "nurse"])
    assert len(ids[0]) == toy.MAX_SEQ_LENGTH
    assert ids[0][-1] == toy.VOCAB["[SEP]"]
    first_words = " ".join(["python"] * (toy.MAX_SEQ_LENGTH - 2))
    np.testing.assert_allclose(embedder.encode([long_text]), embedder.encode([first_words]), atol=1e-6)


def test_lone_surrogate_and_control_characters(embedder: Embedder) -> None:
    texts = ["a\ud800b", "\udfff", "x\x00y\x07", "\x1b[31mred\x1b[0m", "tab\tand\nnewline", "\ud83d\ude00"]
    out = embedder.encode(texts)
    assert out.shape == (len(texts), 6) and np.isfinite(out).all()
    tokenizer = TextTokenizer.from_file(embedder.path / "tokenizer.json", Manifest.load(embedder.path).tokenizer)
    assert tokenizer.prepare("a\ud800b") == "a\ufffdb"
    np.testing.assert_allclose(out, reference(texts), atol=1e-5)


def test_empty_list(embedder: Embedder) -> None:
    assert embedder.encode([]).shape == (0, 6)
    out = embedder.encode([], head="positive")
    assert out.shape == (0, 5) and out.dtype == np.float32


def test_accepts_tuples_and_generators(embedder: Embedder) -> None:
    expected = embedder.encode(["nurse", "java"])
    np.testing.assert_array_equal(embedder.encode(("nurse", "java")), expected)
    np.testing.assert_array_equal(embedder.encode(t for t in ["nurse", "java"]), expected)


@pytest.mark.parametrize(
    ("texts", "where"), [(["ok", None], r"texts\[1\] is None"), (["a", "b", 3], r"texts\[2\] is of type int")]
)
def test_bad_items_name_their_index(embedder: Embedder, texts: list, where: str) -> None:
    with pytest.raises(TypeError, match=where):
        embedder.encode(texts)


@pytest.mark.parametrize("texts", ["a single text", None, 42])
def test_not_a_list(embedder: Embedder, texts: object) -> None:
    with pytest.raises(TypeError, match="list"):
        embedder.encode(texts)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_bad_batch_size(embedder: Embedder, batch_size: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode(["nurse"], batch_size=batch_size)  # type: ignore[arg-type]


def test_unknown_head_lists_heads(embedder: Embedder) -> None:
    with pytest.raises(UnknownHeadError, match="'query'.*anchor, positive") as info:
        embedder.encode(["nurse"], head="query")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownHeadError):
        embedder.dimension("query")


def test_normalize_gives_unit_norms(embedder: Embedder) -> None:
    out = embedder.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    raw = embedder.encode(TEXTS)
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_show_progress(embedder: Embedder, capsys: pytest.CaptureFixture[str]) -> None:
    out = embedder.encode(TEXTS, batch_size=2, show_progress=True)
    assert out.shape == (len(TEXTS), 6)
    assert "Encoding" in capsys.readouterr().err


def test_concurrent_encode_matches_sequential(embedder: Embedder) -> None:
    jobs = [[TEXTS[(i + j) % len(TEXTS)] * (1 + i % 3) for j in range(5 + i)] for i in range(8)]
    sequential = [embedder.encode(job, batch_size=3) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            concurrent = list(pool.map(lambda job: embedder.encode(job, batch_size=3), jobs))
            for seq, con in zip(sequential, concurrent):
                np.testing.assert_array_equal(seq, con)


# -- similarity -------------------------------------------------------------------------------
def test_similarity_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 7)).astype(np.float32), rng.normal(size=(3, 7)).astype(np.float32)
    expected = (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(similarity(a, b), expected, atol=1e-6)


def test_similarity_zero_vectors() -> None:
    a = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    b = np.array([[1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    out = similarity(a, b)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, [[0.0, 0.0], [np.sqrt(0.5), 0.0]], atol=1e-6)


def test_similarity_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="2-D"):
        similarity(np.zeros(3), np.zeros((2, 3)))


# -- damaged artifacts ------------------------------------------------------------------------
def test_missing_file(copy: Path) -> None:
    (copy / "heads" / "positive.onnx").unlink()
    with pytest.raises(ArtifactError, match="positive.onnx.*missing"):
        Embedder(copy)


def test_missing_manifest(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json"):
        Embedder(copy)


def test_checksum_mismatch(copy: Path) -> None:
    path = copy / "pooling.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="pooling.onnx.*sha256"):
        Embedder(copy)


def test_unknown_format_version(copy: Path) -> None:
    path = copy / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="manifest.json.*format version 99"):
        Embedder(copy)


def test_corrupt_onnx_with_valid_checksum(copy: Path) -> None:
    # Garbage that the checksum vouches for: only onnxruntime can notice.
    path = copy / "encoder.onnx"
    path.write_bytes(b"this is not an onnx graph" * 40)
    manifest = Manifest.load(copy)
    manifest.files["encoder.onnx"].sha256 = sha256_of(path)
    manifest.files["encoder.onnx"].size = path.stat().st_size
    manifest.save(copy)
    with pytest.raises(ArtifactError, match="encoder.onnx"):
        Embedder(copy)


def test_graph_with_wrong_inputs(copy: Path) -> None:
    manifest = Manifest.load(copy)
    manifest.encoder.input_names = ["input_ids", "attention_mask", "token_type_ids"]
    manifest.save(copy)
    with pytest.raises(ArtifactError, match="encoder.onnx.*inputs"):
        Embedder(copy)


# -- providers --------------------------------------------------------------------------------
@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_gpu_build(artifact: Path, device: str) -> None:
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        Embedder(artifact, device=device)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="machine has CUDA")
def test_explicit_cuda_provider_without_cpu_is_refused(artifact: Path) -> None:
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        Embedder(artifact, providers=["CUDAExecutionProvider"])


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="machine has CUDA")
def test_both_onnxruntime_distributions_refused(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "_installed", lambda name: True)
    with pytest.raises(ProviderError, match="both `onnxruntime` and `onnxruntime-gpu`"):
        Embedder(artifact, device="cuda")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="machine has CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider")
def test_no_silent_cpu_fallback(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the CUDA provider is there: onnxruntime then quietly runs on the CPU, which must be caught.
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: available)
    monkeypatch.setattr(providers, "_installed", lambda name: name == "onnxruntime-gpu")
    with pytest.raises(ProviderError, match="encoder.onnx: asked for CUDAExecutionProvider"):
        Embedder(artifact, device="cuda")


def test_unknown_device(artifact: Path) -> None:
    with pytest.raises(ProviderError, match="'tpu'"):
        Embedder(artifact, device="tpu")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_explicit_providers_with_cpu(embedder: Embedder, artifact: Path) -> None:
    # Listing CPU accepts a fallback, so this works even without CUDA; it overrides `device`.
    other = Embedder(artifact, device="cuda", providers=["CUDAExecutionProvider", "CPUExecutionProvider"], threads=1)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert cosine_rows(other.encode(TEXTS), embedder.encode(TEXTS)).min() >= 0.99999  # TF32 on the GPU
    else:
        np.testing.assert_allclose(other.encode(TEXTS), embedder.encode(TEXTS), atol=1e-6)
    assert Embedder(artifact, providers=["CPUExecutionProvider"]).encode(["nurse"]).shape == (1, 6)


def test_bad_threads(artifact: Path) -> None:
    with pytest.raises(ValueError, match="threads"):
        Embedder(artifact, threads=0)


# -- packaging --------------------------------------------------------------------------------
def test_runtime_imports_no_heavy_packages(artifact: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from jobbert_onnx import Embedder
        out = Embedder({str(artifact)!r}).encode(["nurse", "java developer"])
        assert out.shape == (2, 6), out.shape
        heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers", "onnx") if m in sys.modules)
        print(",".join(heavy))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=artifact)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"runtime loaded: {result.stdout.strip()}"


def test_version() -> None:
    import jobbert_onnx

    assert jobbert_onnx.__version__ == "0.1.0"


def test_io_binding_path_matches_plain_runs(artifact: Path, embedder: Embedder) -> None:
    # The CUDA path binds inputs and outputs as OrtValues; on the CPU the same code runs with
    # OrtValues in host memory, which checks the chaining of encoder, pooling and head.
    bound = Embedder(artifact, io_binding=True)
    np.testing.assert_allclose(bound.encode(TEXTS, batch_size=3), embedder.encode(TEXTS, batch_size=3), atol=1e-6)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="machine has CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider")
def test_both_distributions_allowed_when_cuda_works(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With both installed but the GPU build importable, the CUDA provider is really there: no
    # refusal for that, only the checks of the session itself (which here falls back, so fails).
    monkeypatch.setattr(providers.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(providers, "_installed", lambda name: True)
    with pytest.raises(ProviderError, match="asked for CUDAExecutionProvider"):
        Embedder(artifact, device="cuda:1")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_matches_cpu(artifact: Path, embedder: Embedder) -> None:
    # onnxruntime's CUDA provider multiplies fp32 matrices in TF32 by default: close, not equal.
    cpu = embedder.encode(TEXTS, batch_size=3)
    for binding in (True, False):
        gpu = Embedder(artifact, device="cuda:0", io_binding=binding)
        assert cosine_rows(gpu.encode(TEXTS, batch_size=3), cpu).min() >= 0.99999


