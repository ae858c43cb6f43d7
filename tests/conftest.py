"""Session-wide fixtures: small local sentence-transformers checkpoints (see tests/fixtures/models.py)."""

from __future__ import annotations

import os

# No test may reach for a model hub. Set before anything imports huggingface_hub / transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.fixtures import models  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy artifact (`tests/toy_artifact.py`: hand-built graphs, no export), built afresh for each
    test module, so that a module may change its copy."""
    from tests import toy_artifact

    return toy_artifact.build(tmp_path_factory.mktemp("toy") / "artifact")


@pytest.fixture(scope="module")
def embedder(artifact: Path):
    """An `Embedder` on the module's toy artifact."""
    from jobbert_onnx import Embedder

    return Embedder(artifact)


@pytest.fixture(scope="session")
def job_titles() -> list[str]:
    """The fixture corpus: unique job titles in en, de, es and zh, sorted."""
    return models.load_job_titles()


@pytest.fixture(scope="session")
def jobbert_asym_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny JobBERT-v3 look-alike in the sentence-transformers 4.x format (legacy ``Asym`` head)."""
    return models.build_jobbert_asym(tmp_path_factory.mktemp("jobbert-asym"))


@pytest.fixture(scope="session")
def jobbert_router_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model as ``jobbert_asym_model``, saved by sentence-transformers 6 (``Router`` head)."""
    return models.build_jobbert_router(tmp_path_factory.mktemp("jobbert-router"))


@pytest.fixture(scope="session")
def jobbert_nfkc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``jobbert_asym_model`` with an NFKC normalizer in tokenizer.json, which transformers 5 drops."""
    return models.build_jobbert_nfkc(tmp_path_factory.mktemp("jobbert-nfkc"))


@pytest.fixture(scope="session")
def jobbert_pickled_model(tmp_path_factory: pytest.TempPathFactory, jobbert_asym_model: Path) -> Path:
    """``jobbert_asym_model`` with the encoder weights as ``pytorch_model.bin`` (needs --allow-pickle)."""
    return models.build_pickled(tmp_path_factory.mktemp("jobbert-pickled"), jobbert_asym_model)


@pytest.fixture(scope="session")
def bert_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny uncased BERT with token type ids, CLS pooling, two Dense layers and Normalize (ST 6 save)."""
    return models.build_bert_cls(tmp_path_factory.mktemp("bert-cls"))


@pytest.fixture(scope="session")
def minilm_model() -> Path:
    """The real all-MiniLM-L6-v2 inside the installed package. Read-only: never write into it."""
    return models.minilm_path()


@pytest.fixture(scope="session")
def mpnet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-mpnet-base-v2 (base size, like JobBERT-v3's encoder): Transformer + mean Pooling."""
    return models.build_mpnet(tmp_path_factory.mktemp("mpnet"), asym_head=False)


@pytest.fixture(scope="session")
def mpnet_asym_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-mpnet-base-v2 under a JobBERT-v2-style Asym head (anchor/positive 768 -> 1024 tanh)."""
    return models.build_mpnet(tmp_path_factory.mktemp("mpnet-asym"), asym_head=True)


@pytest.fixture(scope="session")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """`exported(fixture_name, precision)`: that fixture's model exported (with validation), once per session."""
    from jobbert_onnx.export import ExportConfig, export_model

    cache: dict[tuple[str, str], Path] = {}

    def get(fixture: str, precision: str) -> Path:
        key = (fixture, precision)
        if key not in cache:
            model = request.getfixturevalue(fixture)
            out = tmp_path_factory.mktemp(f"artifact-{fixture}-{precision}") / "artifact"
            cache[key] = export_model(ExportConfig(model=str(model), output=out, precision=precision,
                                                   show_progress=False))
        return cache[key]

    return get
