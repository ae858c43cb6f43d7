"""Session-wide fixtures, and the two test lanes.

The full lane (`make test`, what CI runs) is every test. The fast lane (`make test-fast`, that is
`pytest -p no:cacheprovider --fast-lane`) runs the runtime, server and dataset tests on the toy
artifact (tests/toy_artifact.py: hand-built graphs) and never imports the export stack (torch,
transformers, sentence_transformers). Which tests are in it needs no list, and a new test is safe
by default:

* A test whose fixtures (the closure, not only its arguments) include a checkpoint or an export
  (`CHECKPOINT_FIXTURES`) is marked `full` here, automatically.
* A test module that imports the export stack at the top says so with `pytestmark = pytest.mark.full`
  (or `slow`, for the Ray clusters); the fast lane reads that line from the source and does not
  even import the module.
* Anything else that reaches torch in the fast lane fails it loudly: a checkpoint fixture asked
  for through `request.getfixturevalue` fails the test, and at the end of the session the lane
  fails if torch, transformers or sentence_transformers is in `sys.modules`, naming the first
  module or test after which it was. The fix is to mark that test (or module) `full`.

`onnx` is allowed in the fast lane: the toy artifact is built with it (the runtime itself never
imports it; tests/check_runtime_only.sh checks that in a venv without it).
"""

from __future__ import annotations

import ast
import os
import sys

# No test may reach for a model hub. Set before anything imports huggingface_hub / transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.fixtures.corpus import load_job_titles  # noqa: E402  (no torch: models.py is imported lazily)

EXPORT_STACK = ("torch", "transformers", "sentence_transformers")
"""Modules the fast lane must never import."""

CHECKPOINT_FIXTURES = frozenset({
    "jobbert_asym_model", "jobbert_router_model", "jobbert_nfkc_model", "jobbert_pickled_model", "bert_model",
    "minilm_model", "mpnet_model", "mpnet_asym_model", "exported",
})
"""The fixtures below that build a checkpoint (torch) or export one; a test using any of them is `full`."""

NOT_IN_FAST_LANE = ("full", "slow")
"""The markers that keep a test (or, as a module's `pytestmark`, a whole module) out of the fast lane."""

_first_import = pytest.StashKey[str]()  # where the export stack was first seen in the fast lane
_left_out_modules = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast-lane", action="store_true", default=False,
                     help="run only the tests that need no export stack (not marked full or slow), and "
                          "fail if torch, transformers or sentence_transformers gets imported (make test-fast)")


def _fast_lane(config: pytest.Config) -> bool:
    return bool(config.getoption("fast_lane"))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_left_out_modules] = []


def _module_lane_markers(path: Path) -> set[str]:
    """The names X of every `pytest.mark.X` in the module's top-level `pytestmark = ...` lines."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError):
        return set()  # let pytest import it and report the error itself
    names: set[str] = set()
    for statement in tree.body:
        targets = (statement.targets if isinstance(statement, ast.Assign)
                   else [statement.target] if isinstance(statement, ast.AnnAssign) else [])
        if any(isinstance(target, ast.Name) and target.id == "pytestmark" for target in targets):
            names.update(node.attr for node in ast.walk(statement.value)
                         if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                         and node.value.attr == "mark")
    return names


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """In the fast lane, do not import a test module whose `pytestmark` is `full` or `slow`."""
    if (_fast_lane(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_")
            and _module_lane_markers(collection_path).intersection(NOT_IN_FAST_LANE)):
        config.stash[_left_out_modules].append(collection_path.name)
        return True
    return None  # not False: that would overrule pytest's own ignore rules


@pytest.hookimpl(tryfirst=True)  # before `-m` selects, so that `-m "not full"` sees these markers too
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if CHECKPOINT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.full)
    if _fast_lane(config):
        kept = [item for item in items if not any(item.get_closest_marker(name) for name in NOT_IN_FAST_LANE)]
        if len(kept) < len(items):
            config.hook.pytest_deselected(items=[item for item in items if item not in kept])
            items[:] = kept


def _note_export_stack(config: pytest.Config, where: str) -> None:
    if _fast_lane(config) and _first_import not in config.stash:
        loaded = [name for name in EXPORT_STACK if name in sys.modules]
        if loaded:
            config.stash[_first_import] = f"{', '.join(loaded)} first seen after {where}"


def pytest_sessionstart(session: pytest.Session) -> None:
    _note_export_stack(session.config, "start-up (a plugin or conftest.py)")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    try:
        return (yield)
    finally:
        if isinstance(collector, pytest.Module):  # collecting a module imports it
            _note_export_stack(collector.config, f"importing {collector.nodeid}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        _note_export_stack(item.config, item.nodeid)


def pytest_report_header(config: pytest.Config) -> str | None:
    if _fast_lane(config):
        return "fast lane: tests marked full or slow are left out; the export stack must not be imported"
    return None


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _fast_lane(config) and config.stash[_left_out_modules]:
        terminalreporter.write_line(f"fast lane: {len(config.stash[_left_out_modules])} modules marked full or "
                                    f"slow not imported: {' '.join(sorted(config.stash[_left_out_modules]))}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The fast lane's promise, checked once everything (tests and fixture teardown) has run."""
    if not _fast_lane(session.config):
        return
    loaded = [name for name in EXPORT_STACK if name in sys.modules]
    if loaded:
        where = session.config.stash.get(_first_import, "where unknown")
        message = (f"fast lane: the export stack was imported ({', '.join(loaded)}; {where}); "
                   "mark that test or module `full` (pytestmark = pytest.mark.full)")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("!", message, red=True, bold=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --------------------------------------------------------------------------------------------
# Fixtures. The toy artifact needs no export stack; the checkpoint fixtures import
# tests/fixtures/models.py (torch, sentence-transformers) only when a test asks for one.
# --------------------------------------------------------------------------------------------


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
    return load_job_titles()


def _models(request: pytest.FixtureRequest):
    """tests/fixtures/models.py, imported on first use (it imports torch). In the fast lane a test
    reaches here only through `request.getfixturevalue`, which the automatic `full` marking cannot
    see: fail it with the fix rather than import torch."""
    if _fast_lane(request.config):
        pytest.fail(f"the fixture {request.fixturename!r} needs torch, so the test that asks for it "
                    "(through request.getfixturevalue) must be marked full: @pytest.mark.full", pytrace=False)
    from tests.fixtures import models

    return models


@pytest.fixture(scope="session")
def jobbert_asym_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny JobBERT-v3 look-alike in the sentence-transformers 4.x format (legacy ``Asym`` head)."""
    return _models(request).build_jobbert_asym(tmp_path_factory.mktemp("jobbert-asym"))


@pytest.fixture(scope="session")
def jobbert_router_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model as ``jobbert_asym_model``, saved by sentence-transformers 6 (``Router`` head)."""
    return _models(request).build_jobbert_router(tmp_path_factory.mktemp("jobbert-router"))


@pytest.fixture(scope="session")
def jobbert_nfkc_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``jobbert_asym_model`` with an NFKC normalizer in tokenizer.json, which transformers 5 drops."""
    return _models(request).build_jobbert_nfkc(tmp_path_factory.mktemp("jobbert-nfkc"))


@pytest.fixture(scope="session")
def jobbert_pickled_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                          jobbert_asym_model: Path) -> Path:
    """``jobbert_asym_model`` with the encoder weights as ``pytorch_model.bin`` (needs --allow-pickle)."""
    return _models(request).build_pickled(tmp_path_factory.mktemp("jobbert-pickled"), jobbert_asym_model)


@pytest.fixture(scope="session")
def bert_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny uncased BERT with token type ids, CLS pooling, two Dense layers and Normalize (ST 6 save)."""
    return _models(request).build_bert_cls(tmp_path_factory.mktemp("bert-cls"))


@pytest.fixture(scope="session")
def minilm_model(request: pytest.FixtureRequest) -> Path:
    """The real all-MiniLM-L6-v2 inside the installed package. Read-only: never write into it."""
    return _models(request).minilm_path()


@pytest.fixture(scope="session")
def mpnet_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-mpnet-base-v2 (base size, like JobBERT-v3's encoder): Transformer + mean Pooling."""
    return _models(request).build_mpnet(tmp_path_factory.mktemp("mpnet"), asym_head=False)


@pytest.fixture(scope="session")
def mpnet_asym_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-mpnet-base-v2 under a JobBERT-v2-style Asym head (anchor/positive 768 -> 1024 tanh)."""
    return _models(request).build_mpnet(tmp_path_factory.mktemp("mpnet-asym"), asym_head=True)


@pytest.fixture(scope="session")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
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
