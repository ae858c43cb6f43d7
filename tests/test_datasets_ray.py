"""The Ray engine on a local Ray instance (started once for the module): the same output as the
local engine row for row, CSV/JSONL/Parquet, an actor that dies mid-batch, resume after a failure,
finished runs, bad rows, and the Ray Data checkpointing behaviour the engine relies on.

The test callables subclass `RayEmbedBatches` and are pickled by value, so that Ray's workers do
not need to import this module. They leave notes (ids seen, markers) beside the output folder.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from jobbert_onnx.datasets import BadRowError, InputError, OutputFolderError, embed_dataset
from jobbert_onnx.datasets.output import OutputFolder
from jobbert_onnx.datasets import ray_engine
from jobbert_onnx.datasets.ray_engine import RayEmbedBatches
from jobbert_onnx.runtime import Embedder
from tests.dataset_data import embeddings, rows, write

# Run by tests/test_datasets_ray_process.py in a pytest process of its own (see why there).
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("JOBBERT_ONNX_RAY_TESTS") != "child",
    reason="runs in its own process, from tests/test_datasets_ray_process.py (JOBBERT_ONNX_RAY_TESTS=child)")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ATOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    # 2 actors of 1 CPU, a slot for read/write tasks and one for the checkpoint filter actor, and
    # room for the actors of a failed run, which Ray frees only once their current batch ends
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return rows(1200, distinct=300)


@pytest.fixture(scope="module")
def source(table: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("input")
    for i, start in enumerate(range(0, table.num_rows, 400)):  # three files
        write(table.slice(start, 400), folder / f"part-{i}.parquet")
    return folder


@pytest.fixture(scope="module")
def local_output(artifact: Path, source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    embed_dataset(artifact, source, out, id_column="id", batch_rows=200, show_progress=False)
    return out


@pytest.fixture(scope="module")
def ray_output(artifact: Path, source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ray") / "out"
    summary = ray_run(artifact, source, out, workers=2)
    return out, summary


def ray_run(artifact, source, out, **kwargs):
    kwargs = {"id_column": "id", "batch_rows": 200, "engine": "ray", "show_progress": False, **kwargs}
    return embed_dataset(artifact, source, out, **kwargs)


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# -- callables that misbehave on purpose ----------------------------------------------------
class Recording(RayEmbedBatches):
    """Notes the ids of every batch it embeds in OUTPUT/../seen/ (one file per batch)."""

    def notes(self) -> Path:
        return Path(self.output.path).parent

    def record(self, table: pa.Table) -> None:
        seen = self.notes() / "seen"
        seen.mkdir(exist_ok=True)
        (seen / uuid.uuid4().hex).write_text(" ".join(map(str, table["id"].to_pylist())))

    def __call__(self, table: pa.Table) -> pa.Table:
        out = super().__call__(table)
        self.record(table)
        return out


def seen_ids(out: Path) -> list[int]:
    """The ids noted by `Recording` since the last call."""
    files = list((out.parent / "seen").glob("*")) if (out.parent / "seen").exists() else []
    ids = [int(i) for f in files for i in f.read_text().split()]
    for f in files:
        f.unlink()
    return ids


class DiesOnce(Recording):
    """Kills its actor's process with os._exit in the middle of its second batch (embedded, not yet
    returned), once: a marker file beside the output guards it."""

    def __call__(self, table: pa.Table) -> pa.Table:
        self.batches = getattr(self, "batches", 0) + 1
        out = RayEmbedBatches.__call__(self, table)
        marker = self.notes() / "died"
        if self.batches == 2 and not marker.exists():
            marker.write_text(" ".join(map(str, table["id"].to_pylist())))
            os._exit(1)
        self.record(table)
        return out


class FailsAfterTwoCommits(Recording):
    """A job that fails partway: from the fourth batch on, the first batch to run waits until Ray
    Data has committed two output files (those of earlier batches), then raises, once."""

    def __call__(self, table: pa.Table) -> pa.Table:
        marker = self.notes() / "failed"
        seen = self.notes() / "seen"
        if not marker.exists() and seen.exists() and len(list(seen.iterdir())) >= 3:
            checkpoints = Path(self.output.path) / "_checkpoint"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not marker.exists() and len(
                    [p for p in checkpoints.glob("*.parquet") if not p.name.endswith(".pending.parquet")]) < 2:
                time.sleep(0.05)
            if not marker.exists():
                marker.write_text("")
                raise RuntimeError("simulated failure")
        return super().__call__(table)


def committed_ids(out: Path) -> set[int]:
    """The ids in Ray Data's committed checkpoint files."""
    files = [p for p in (out / "_checkpoint").glob("*.parquet") if not p.name.endswith(".pending.parquet")]
    return {i for f in files for i in pq.read_table(f)["id"].to_pylist()}


# -- tests ----------------------------------------------------------------------------------
def test_ray_output_equals_local_row_for_row(ray_output, local_output: Path, artifact: Path, table: pa.Table) -> None:
    out, summary = ray_output
    ids, vectors = embeddings(out)
    local_ids, local_vectors = embeddings(local_output)
    assert ids.tolist() == local_ids.tolist() == table["id"].to_pylist()
    assert np.array_equal(vectors, local_vectors)
    np.testing.assert_allclose(vectors, Embedder(artifact).encode(table["text"].to_pylist()), rtol=0, atol=ATOL)
    ray_schema = pq.read_schema(next(p for p in out.glob("*.parquet")))
    local_schema = pq.read_schema(local_output / "part-000000.parquet")
    assert ray_schema.field("embedding").type == local_schema.field("embedding").type == pa.list_(pa.float32(), 6)
    for key in (b"jobbert_onnx.artifact_sha256", b"jobbert_onnx.head", b"jobbert_onnx.normalize"):
        assert ray_schema.metadata[key] == local_schema.metadata[key]
    assert (summary["rows_read"], summary["rows_written"], summary["rejected_rows"]) == (1200, 1200, 0)
    assert summary["engine"] == "ray" and summary["files"] == 6  # one file per 200-row block
    assert not (out / "_checkpoint").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_ray_reads_csv_and_jsonl(suffix: str, ray_output, table: pa.Table, artifact: Path, tmp_path: Path) -> None:
    source = write(table, tmp_path / f"in{suffix}")
    ray_run(artifact, source, tmp_path / "out", workers=1)
    ids, vectors = embeddings(tmp_path / "out")
    expected_ids, expected = embeddings(ray_output[0])
    assert ids.tolist() == expected_ids.tolist()
    assert np.array_equal(vectors, expected)


def test_actor_that_dies_mid_batch_still_gives_exactly_once(artifact: Path, source: Path, local_output: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = ray_run(artifact, source, out, workers=2, ray_udf=DiesOnce)
    assert (tmp_path / "died").exists()  # the actor did die, holding a batch it had embedded
    died_with = [int(i) for i in (tmp_path / "died").read_text().split()]
    seen = seen_ids(out)
    assert set(died_with) <= set(seen)  # Ray ran that batch again on a new actor
    ids, vectors = embeddings(out)
    assert ids.tolist() == embeddings(local_output)[0].tolist()  # every id exactly once
    assert np.array_equal(vectors, embeddings(local_output)[1])
    assert summary["rows_written"] == 1200


def test_failed_job_resumes_with_only_the_remaining_rows(artifact: Path, source: Path, local_output: Path,
                                                         table: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Exception, match="simulated failure"):
        ray_run(artifact, source, out, workers=2, ray_udf=FailsAfterTwoCommits)
    assert not (out / "_summary.json").exists()
    done = committed_ids(out)
    assert 400 <= len(done) < 1200
    seen_ids(out)  # forget the first run's notes
    summary = ray_run(artifact, source, out, workers=2, ray_udf=Recording)
    seen = seen_ids(out)
    assert not set(seen) & done  # nothing committed was embedded again
    assert set(seen) | done == set(table["id"].to_pylist())
    assert summary["rows_this_run"] == 1200 - len(done)
    ids, vectors = embeddings(out)
    assert ids.tolist() == embeddings(local_output)[0].tolist()  # every id exactly once
    assert np.array_equal(vectors, embeddings(local_output)[1])


def test_rerun_after_the_write_reads_everything_from_the_checkpoint(artifact: Path, source: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins Ray Data's checkpoint: a job whose files were all written (it died before the summary)
    embeds and writes nothing when run again. A finished job does not even reach the Ray engine."""
    out = tmp_path / "out"
    finish = OutputFolder.finish

    def crash(*args, **kwargs):
        raise RuntimeError("crash before the summary")

    monkeypatch.setattr(OutputFolder, "finish", crash)
    with pytest.raises(RuntimeError, match="crash before the summary"):
        ray_run(artifact, source, out, workers=1, ray_udf=Recording)
    monkeypatch.setattr(OutputFolder, "finish", finish)
    assert len(seen_ids(out)) == 1200 and len(committed_ids(out)) == 1200
    data = {p.name for p in out.glob("*.parquet")}
    summary = ray_run(artifact, source, out, workers=1, ray_udf=Recording)
    assert seen_ids(out) == []  # Ray Data's checkpoint filtered every row
    assert {p.name for p in out.glob("*.parquet")} == data  # and no file was written
    assert (summary["rows_written"], summary["rows_this_run"]) == (1200, 0)
    before = listing(out)

    def no_ray(*args, **kwargs):
        raise AssertionError("a finished run started the Ray engine")

    monkeypatch.setattr(ray_engine, "run", no_ray)
    assert ray_run(artifact, source, out, workers=1) == summary
    assert listing(out) == before


def test_bad_rows_on_ray(artifact: Path, tmp_path: Path) -> None:
    source = write(pa.table({"id": [1, 2, 3, 4, 5, 6], "text": ["nurse", None, "care", None, "java", "red"]}),
                   tmp_path / "in.parquet")
    with pytest.raises(BadRowError, match=r"bad row id=[24]: text is null\. Fix the input, or pass --on-bad-row skip"):
        ray_run(artifact, source, tmp_path / "fail", batch_rows=3)
    summary = ray_run(artifact, source, tmp_path / "skip", batch_rows=2, on_bad_row="skip")
    rejects = pq.read_table(tmp_path / "skip" / "_rejects.parquet").sort_by("id")
    assert rejects.to_pylist() == [{"id": 2, "reason": "text is null"}, {"id": 4, "reason": "text is null"}]
    assert embeddings(tmp_path / "skip")[0].tolist() == [1, 3, 5, 6]
    assert (summary["rows_read"], summary["rows_written"], summary["rejected_rows"]) == (6, 4, 2)
    local = embed_dataset(artifact, source, tmp_path / "local", id_column="id", on_bad_row="skip", show_progress=False)
    assert pq.read_table(tmp_path / "local" / "_rejects.parquet").sort_by("id").equals(rejects)
    assert np.array_equal(embeddings(tmp_path / "local")[1], embeddings(tmp_path / "skip")[1])
    assert local["rejected_rows"] == 2
    write(pa.table({"id": [7], "title": ["nurse"]}), tmp_path / "more" / "b.parquet")
    write(pa.table({"id": [8], "text": ["nurse"]}), tmp_path / "more" / "a.parquet")
    with pytest.raises(InputError, match=r"b\.parquet: no column 'text' \(columns: id, title\)"):
        ray_run(artifact, tmp_path / "more", tmp_path / "missing", on_bad_row="skip")


def test_text_too_long_is_a_bad_row_on_ray(artifact: Path, tmp_path: Path) -> None:
    """A text the runtime refuses (TextTooLongError) fails the job naming its id, or goes to the rejects."""
    source = write(pa.table({"id": [1, 2, 3, 4], "text": ["nurse", "x" * 70_000, "care", "java"]}),
                   tmp_path / "in.parquet")
    with pytest.raises(BadRowError, match=r"bad row id=2: a text of 70,000 characters cannot be embedded"):
        ray_run(artifact, source, tmp_path / "fail", batch_rows=2)
    summary = ray_run(artifact, source, tmp_path / "skip", batch_rows=2, on_bad_row="skip")
    rejects = pq.read_table(tmp_path / "skip" / "_rejects.parquet")
    assert rejects["id"].to_pylist() == [2] and "cannot be embedded" in rejects["reason"][0].as_py()
    ids, vectors = embeddings(tmp_path / "skip")
    assert ids.tolist() == [1, 3, 4]
    np.testing.assert_allclose(vectors, Embedder(artifact).encode(["nurse", "care", "java"]), rtol=0, atol=ATOL)
    assert (summary["rows_read"], summary["rows_written"], summary["rejected_rows"]) == (4, 3, 1)


def test_output_of_another_artifact_head_or_engine_is_refused(ray_output, artifact: Path, source: Path) -> None:
    out, _ = ray_output
    before = listing(out)
    with pytest.raises(OutputFolderError, match="head 'anchor', this run uses 'positive'"):
        ray_run(artifact, source, out, head="positive")
    with pytest.raises(OutputFolderError, match="normalize False, this run uses True"):
        ray_run(artifact, source, out, normalize=True)
    with pytest.raises(OutputFolderError, match="resume with --engine ray"):
        embed_dataset(artifact, source, out, id_column="id", batch_rows=200, show_progress=False)
    assert listing(out) == before
