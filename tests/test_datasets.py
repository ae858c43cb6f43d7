"""The dataset path's local engine and its engine-neutral piece, on the toy artifact (torch-free).

Correctness against `Embedder.encode`, the formats, the output's shape and metadata, bad rows,
resume after a failure and after a hard kill mid-write, finished runs, refusing another
artifact's folder, and memory that does not grow with the input.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobbert_onnx.datasets import local
from jobbert_onnx.datasets import BadRowError, InputError, OutputFolderError, TableEmbedder, embed_dataset
from jobbert_onnx.datasets.inputs import _glob_regex, resolve_input
from jobbert_onnx.runtime import Embedder, TextTooLongError, UnknownHeadError
from jobbert_onnx.runtime.cache import ENTRY_OVERHEAD, EmbeddingCache
from tests import toy_artifact
from tests.dataset_data import distinct_texts, embeddings, rows, write

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-6  # a text's embedding alone or in another batch: equal up to float summation order


def run(artifact, source, out, **kwargs):
    kwargs.setdefault("show_progress", False)
    return embed_dataset(artifact, source, out, **kwargs)


def listing(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the engine-neutral piece ---------------------------------------------------------------
@pytest.mark.parametrize("head,normalize", [("anchor", False), ("positive", True)])
def test_table_embedder_equals_encode(embedder: Embedder, head: str, normalize: bool) -> None:
    texts = distinct_texts(40)
    first = pa.table({"id": list(range(60)), "text": texts[:30] + texts[:30]})  # each text twice
    second = pa.table({"id": list(range(60, 80)), "text": texts[20:40]})  # 10 seen in the first batch
    table_embedder = TableEmbedder(embedder, text_column="text", id_column="id", head=head, normalize=normalize)
    a, b = table_embedder(first), table_embedder(second)
    assert (a.stats.rows, a.stats.unique_texts, a.stats.encoded) == (60, 30, 30)
    assert (b.stats.rows, b.stats.unique_texts, b.stats.encoded) == (20, 20, 10)  # the cache served 10
    for result, table in ((a, first), (b, second)):
        assert result.table["id"].equals(table["id"])
        assert result.table.schema.field("embedding").type == pa.list_(pa.float32(), embedder.dimension(head))
        got = np.asarray(result.table["embedding"].combine_chunks().flatten()).reshape(table.num_rows, -1)
        want = embedder.encode(table["text"].to_pylist(), head=head, normalize=normalize)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    plain = TableEmbedder(embedder, text_column="text", id_column="id", head=head, normalize=normalize, dedup=False)
    assert plain(first).stats.encoded == 60
    np.testing.assert_allclose(np.asarray(plain(second).table["embedding"].combine_chunks().flatten()),
                               np.asarray(b.table["embedding"].combine_chunks().flatten()), rtol=0, atol=ATOL)


def test_table_embedder_metadata_and_rows(embedder: Embedder, artifact: Path) -> None:
    import hashlib

    table_embedder = TableEmbedder(embedder, text_column="title", head="positive", normalize=True)
    result = table_embedder(pa.table({"title": ["nurse", "python developer"]}), first_row=7)
    assert result.table["row"].to_pylist() == [7, 8]
    metadata = result.table.schema.metadata
    assert metadata[b"jobbert_onnx.artifact_sha256"].decode() == \
        hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest()
    assert (metadata[b"jobbert_onnx.head"], metadata[b"jobbert_onnx.normalize"]) == (b"positive", b"true")
    with pytest.raises(UnknownHeadError, match="negative"):
        TableEmbedder(embedder, text_column="title", head="negative")


def test_lru_cache_stays_bounded(embedder: Embedder) -> None:
    # room for 2 entries (key, raw anchor vector of 6 floats, overhead): the third text evicts the
    # least recently used one
    entry = 32 + 4 * embedder.dimension("anchor") + ENTRY_OVERHEAD
    table_embedder = TableEmbedder(embedder, text_column="text", id_column="id", cache_mb=(2 * entry + 100) / 2**20)
    texts = distinct_texts(3)
    stats = [table_embedder(pa.table({"id": [i], "text": [t]})).stats
             for i, t in enumerate([texts[0], texts[1], texts[0], texts[2], texts[0], texts[1]])]
    assert [s.encoded for s in stats] == [1, 1, 0, 1, 0, 1]  # texts[1] was evicted by texts[2]; texts[0] stayed
    assert [s.cache_hits for s in stats] == [0, 0, 1, 0, 1, 0]
    assert [s.cache_misses for s in stats] == [1, 1, 0, 1, 0, 1]
    cache = table_embedder._cache
    assert isinstance(cache, EmbeddingCache) and len(cache) == 2 and cache.bytes <= 2 * entry
    assert cache.evictions == 2


def test_table_embedder_shares_the_servers_cache_keys(embedder: Embedder) -> None:
    """The cache holds raw vectors under `PreparedTexts.keys(artifact_id, head)`, so one normalized
    and one raw output come from the same entries; texts equal once prepared run once."""
    texts = distinct_texts(4)
    table_embedder = TableEmbedder(embedder, text_column="text", id_column="id", head="positive", normalize=True)
    batch = pa.table({"id": list(range(6)), "text": texts + [f"  {texts[0]} ", texts[1]]})
    result = table_embedder(batch)
    assert (result.stats.unique_texts, result.stats.encoded) == (5, 4)  # "  a " is "a" once prepared
    assert (result.stats.cache_hits, result.stats.cache_misses) == (0, 4)
    keys = embedder.prepare(texts).keys(embedder.artifact_id, "positive")
    assert table_embedder._cache.keys() == keys
    raw = embedder.encode(texts, head="positive")
    for key, want in zip(keys, raw):
        np.testing.assert_allclose(table_embedder._cache.get(key).vector, want, rtol=0, atol=ATOL)
    got = np.asarray(result.table["embedding"].combine_chunks().flatten()).reshape(6, -1)
    np.testing.assert_allclose(got, embedder.encode(batch["text"].to_pylist(), head="positive", normalize=True),
                               rtol=0, atol=ATOL)
    again = table_embedder(pa.table({"id": [9, 10], "text": [texts[2], "a text not seen"]}))
    assert (again.stats.cache_hits, again.stats.cache_misses, again.stats.encoded) == (1, 1, 1)


def test_prefetch_fills_the_cache_once_per_new_text(embedder: Embedder) -> None:
    texts = distinct_texts(30)
    tables = [pa.table({"id": list(range(20)), "text": texts[:20]}),
              pa.table({"id": list(range(20, 40)), "text": texts[10:30]})]
    table_embedder = TableEmbedder(embedder, text_column="text", id_column="id")
    table_embedder(pa.table({"id": [0, 1], "text": texts[:2]}))  # two texts cached already
    assert table_embedder.prefetch(tables) == 28 and table_embedder.prefetch(tables) == 0
    results = [table_embedder(table) for table in tables]
    assert [(r.stats.cache_hits, r.stats.cache_misses, r.stats.encoded) for r in results] == [(20, 0, 0), (20, 0, 0)]
    for result, table in zip(results, tables):
        got = np.asarray(result.table["embedding"].combine_chunks().flatten()).reshape(table.num_rows, -1)
        np.testing.assert_allclose(got, embedder.encode(table["text"].to_pylist()), rtol=0, atol=ATOL)
    off = TableEmbedder(embedder, text_column="text", id_column="id", cache_mb=0)
    assert off.prefetch(tables) == 0
    stats = off(tables[0]).stats
    assert (stats.encoded, stats.cache_hits, stats.cache_misses) == (20, 0, 0)  # off: nothing looked up


def counting_tokenizations(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many times each (prepared) text goes through `embedder`'s tokenizer from now on."""
    tokenizer, seen = embedder._tokenizer, Counter()
    original = tokenizer.encodings

    def counting(prepared):
        seen.update(prepared)
        return original(prepared)

    monkeypatch.setattr(tokenizer, "encodings", counting)
    return seen


@pytest.mark.parametrize("cache_mb", [0, 128])
def test_each_distinct_text_of_a_batch_is_tokenized_once(embedder: Embedder, monkeypatch: pytest.MonkeyPatch,
                                                         cache_mb: float) -> None:
    texts = distinct_texts(12)
    batches = [texts[:8] * 3, texts[4:] * 2 + texts[:2]]  # repeats within each batch, and across them
    seen = counting_tokenizations(embedder, monkeypatch)
    table_embedder = TableEmbedder(embedder, text_column="text", id_column="id", cache_mb=cache_mb)
    for batch in batches:
        seen.clear()
        result = table_embedder(pa.table({"id": list(range(len(batch))), "text": batch}))
        assert seen == Counter(set(batch)), seen  # each distinct text once, whether the cache has it or not
        got = np.asarray(result.table["embedding"].combine_chunks().flatten()).reshape(len(batch), -1)
        np.testing.assert_allclose(got, embedder.encode(batch), rtol=0, atol=ATOL)


def test_texts_prefetched_are_not_tokenized_again(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prefetch` tokenizes the next batches' distinct texts once; the batches then find their keys,
    and tokenize only a text whose embedding has left the cache since (once)."""
    texts = distinct_texts(20)
    tables = [pa.table({"id": list(range(30)), "text": texts[:10] * 3}),
              pa.table({"id": list(range(30, 50)), "text": texts[5:15] * 2})]
    seen = counting_tokenizations(embedder, monkeypatch)
    table_embedder = TableEmbedder(embedder, text_column="text", id_column="id")
    assert table_embedder.prefetch(tables) == 15
    assert seen == Counter(texts[:15])
    seen.clear()
    results = [table_embedder(table) for table in tables]
    assert not seen  # every text's key is known, and its embedding cached
    assert [(r.stats.unique_texts, r.stats.cache_hits, r.stats.encoded) for r in results] == [(10, 10, 0)] * 2
    table_embedder.prefetch(tables[:1])
    table_embedder._cache = EmbeddingCache(128 * 2**20, 10**6)  # as if every embedding had been evicted
    seen.clear()
    again = table_embedder(pa.table({"id": [0, 1, 2], "text": [texts[0], texts[0], texts[19]]}))
    assert seen == Counter([texts[0], texts[19]]) and again.stats.encoded == 2
    got = np.asarray(again.table["embedding"].combine_chunks().flatten()).reshape(3, -1)
    np.testing.assert_allclose(got, embedder.encode([texts[0], texts[0], texts[19]]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("lookahead", [1, 8])
def test_the_local_engine_tokenizes_each_text_once_per_batch(artifact: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, lookahead: int) -> None:
    """Issue 17: a text is tokenized once per distinct text per batch in the dataset engine (once
    per group of `LOOKAHEAD_SHARDS` batches, as `prefetch` reads the group's texts ahead)."""
    monkeypatch.setattr(local, "LOOKAHEAD_SHARDS", lookahead)
    table = rows(400, distinct=50)
    source = write(table, tmp_path / "in.parquet")
    embedder = Embedder(artifact)
    seen = counting_tokenizations(embedder, monkeypatch)
    summary = run(embedder, source, tmp_path / "out", id_column="id", batch_rows=100)
    texts = table["text"].to_pylist()
    per_batch = Counter(t for start in range(0, 400, 100) for t in set(texts[start:start + 100]))
    assert sum(seen.values()) == (summary["unique_texts"] if lookahead == 1 else 50)
    assert all(seen[t] <= per_batch[t] for t in seen) and set(seen) == set(texts)
    if lookahead == 1:
        assert seen == per_batch


# -- inputs ---------------------------------------------------------------------------------
def test_glob_patterns() -> None:
    assert _glob_regex("/d/*.csv").match("/d/a.csv") and not _glob_regex("/d/*.csv").match("/d/x/a.csv")
    assert _glob_regex("/d/**/*.csv").match("/d/x/y/a.csv") and _glob_regex("/d/**/*.csv").match("/d/a.csv")
    assert _glob_regex("/d/part-?[0-3].parquet").match("/d/part-12.parquet")
    assert not _glob_regex("/d/part-?[0-3].parquet").match("/d/part-15.parquet")


def test_input_resolution(tmp_path: Path) -> None:
    table = rows(4)
    for name in ("b.csv", "a.csv", "sub/c.csv", "_SUCCESS", ".a.csv.crc", "_rejects/x.csv", "notes.txt"):
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(table, path) if name.endswith(".csv") else path.write_text("x")
    folder = resolve_input(str(tmp_path / "in"))
    assert [Path(p).relative_to(tmp_path / "in").as_posix() for p in folder.paths] == ["a.csv", "b.csv", "sub/c.csv"]
    assert folder.format == "csv"
    assert len(resolve_input(str(tmp_path / "in" / "*.csv")).paths) == 2
    assert len(resolve_input(str(tmp_path / "in" / "**" / "*.csv")).paths) == 3
    write(table, tmp_path / "in" / "d.parquet")
    with pytest.raises(InputError, match="several formats"):
        resolve_input(str(tmp_path / "in"))
    with pytest.raises(InputError, match="no such file"):
        resolve_input(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no file matches"):
        resolve_input(str(tmp_path / "in" / "*.jsonl"))
    (tmp_path / "texts.data").write_text('{"text": "nurse"}\n')
    with pytest.raises(InputError, match="--input-format"):
        resolve_input(str(tmp_path / "texts.data"))
    assert resolve_input(str(tmp_path / "texts.data"), "json").format == "json"


# -- the local engine -----------------------------------------------------------------------
def test_output_equals_encode_with_metadata_and_summary(artifact: Path, embedder: Embedder, tmp_path: Path) -> None:
    table = rows(250, distinct=60)
    source = write(table, tmp_path / "in.parquet")
    summary = run(artifact, source, tmp_path / "out", id_column="id", batch_rows=100, head="positive", normalize=True)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["_run.json", "_summary.json", "part-000000.parquet",
                                                    "part-000001.parquet", "part-000002.parquet"]
    ids, vectors = embeddings(out)
    assert ids.tolist() == table["id"].to_pylist()
    want = embedder.encode(table["text"].to_pylist(), head="positive", normalize=True)
    np.testing.assert_allclose(vectors, want, rtol=0, atol=ATOL)
    schema = pq.read_schema(out / "part-000001.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32(), toy_artifact.HEAD_DIMS["positive"])
    assert schema.metadata[b"jobbert_onnx.head"] == b"positive"
    assert schema.metadata[b"jobbert_onnx.normalize"] == b"true"
    assert schema.metadata[b"jobbert_onnx.artifact_sha256"].decode() == summary["artifact_sha256"]
    on_disk = json.loads((out / "_summary.json").read_text())
    assert on_disk == summary
    assert (summary["rows_read"], summary["rows_written"], summary["rejected_rows"], summary["files"]) == (250, 250, 0, 3)
    # distinct texts are counted per batch of 100 rows, and the cache spares the repeats across batches
    per_batch = sum(len(set(table["text"].to_pylist()[i:i + 100])) for i in range(0, 250, 100))
    assert summary["unique_texts"] == per_batch
    assert summary["texts_encoded"] == len(set(table["text"].to_pylist()))
    # each batch's distinct texts are looked up in the cache: the lookahead (all 3 shards here) embedded them
    assert (summary["cache_hits"], summary["cache_misses"]) == (per_batch, 0)
    # the summary is written last
    assert (out / "_summary.json").stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in out.glob("part-*"))


def test_row_numbers_without_id_follow_file_order(artifact: Path, embedder: Embedder, tmp_path: Path) -> None:
    first, second = rows(30), rows(20, first_id=5000)
    write(second, tmp_path / "in" / "b.csv")
    write(first, tmp_path / "in" / "a.csv")
    run(artifact, tmp_path / "in", tmp_path / "out", batch_rows=7)
    ids, vectors = embeddings(tmp_path / "out", "row")
    assert ids.tolist() == list(range(50))
    texts = first["text"].to_pylist() + second["text"].to_pylist()
    np.testing.assert_allclose(vectors, embedder.encode(texts), rtol=0, atol=ATOL)


def test_formats_give_the_same_embeddings(artifact: Path, tmp_path: Path) -> None:
    table = rows(120, distinct=50)
    results = {}
    for name in ("in.parquet", "in.csv", "in.jsonl", "in.csv.gz"):
        source = write(table, tmp_path / name)
        run(artifact, source, tmp_path / f"out-{name}", id_column="id", batch_rows=50)
        results[name] = embeddings(tmp_path / f"out-{name}")
    ids, vectors = results.pop("in.parquet")
    assert ids.tolist() == table["id"].to_pylist()
    for name, (other_ids, other_vectors) in results.items():
        assert other_ids.tolist() == ids.tolist(), name
        assert np.array_equal(other_vectors, vectors), name


def test_csv_text_stays_text(artifact: Path, embedder: Embedder, tmp_path: Path) -> None:
    """A CSV field that looks like a number or is empty is still a text (CSV has no types)."""
    source = tmp_path / "in.csv"
    source.write_text("id,text\n1,42\n2,\n3,nurse\n")
    run(artifact, source, tmp_path / "out", id_column="id")
    ids, vectors = embeddings(tmp_path / "out")
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(vectors, embedder.encode(["42", "", "nurse"]), rtol=0, atol=ATOL)


def test_url_input_and_output_through_fsspec(artifact: Path, embedder: Embedder) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    table = rows(40, distinct=15)
    with memory.open("/jobs/in/part-0.parquet", "wb") as f:
        pq.write_table(table, f)
    summary = run(artifact, "memory://jobs/in", "memory://jobs/out", id_column="id", batch_rows=16)
    assert summary["rows_written"] == 40
    assert memory.exists("/jobs/out/_summary.json") and memory.exists("/jobs/out/part-000002.parquet")
    with memory.open("/jobs/out/part-000000.parquet", "rb") as f:
        first = pq.read_table(f)
    assert first["id"].to_pylist() == table["id"].to_pylist()[:16]
    got = np.asarray(first["embedding"].combine_chunks().flatten()).reshape(16, -1)
    np.testing.assert_allclose(got, embedder.encode(table["text"].to_pylist()[:16]), rtol=0, atol=ATOL)
    memory.rm("/jobs", recursive=True)


# -- bad rows -------------------------------------------------------------------------------
def bad_inputs(folder: Path) -> dict[int, str]:
    """A folder of Parquet files with bad rows; returns {id: reason} of the bad ones."""
    write(pa.table({"id": [1, 2, 3, 4], "text": ["nurse", None, "care", "red"]}), folder / "a.parquet")
    write(pa.table({"id": pa.array([5, None, 7], pa.int64()), "text": ["java", "hello", "world"]}), folder / "b.parquet")
    write(pa.table({"id": [8, 9], "text": [10, 11]}), folder / "c.parquet")  # numbers, not texts
    write(pa.table({"id": [10, 11], "title": ["nurse", "data"]}), folder / "d.parquet")  # no text column
    write(pa.table({"id": [12], "text": ["senior nurse"]}), folder / "e.parquet")
    return {2: "text is null", None: "id is null", 8: "text is int64, not a string",
            9: "text is int64, not a string", 10: "no column 'text'", 11: "no column 'text'"}


def test_bad_row_fails_with_its_id_and_reason(artifact: Path, tmp_path: Path) -> None:
    bad_inputs(tmp_path / "in")
    with pytest.raises(BadRowError, match=r"bad row id=2, input row 1 in .*a\.parquet: text is null"):
        run(artifact, tmp_path / "in", tmp_path / "out", id_column="id")
    assert not (tmp_path / "out" / "_summary.json").exists()
    for name, reason in (("c.parquet", "id=8, input row 0 in .*c.parquet: text is int64, not a string"),
                         ("d.parquet", "id=10, input row 0 in .*d.parquet: no column 'text'")):
        with pytest.raises(BadRowError, match=reason):
            run(artifact, tmp_path / "in" / name, tmp_path / f"out-{name}", id_column="id")
    with pytest.raises(BadRowError, match="id=None, input row 1 in .*b.parquet: id is null"):
        run(artifact, tmp_path / "in" / "b.parquet", tmp_path / "out-b", id_column="id")
    with pytest.raises(InputError, match=r"a\.parquet: no id column 'key' \(columns: id, text\)"):
        run(artifact, tmp_path / "in" / "a.parquet", tmp_path / "out-key", id_column="key")


def test_bad_rows_skipped_into_the_rejects_file(artifact: Path, embedder: Embedder, tmp_path: Path) -> None:
    expected = bad_inputs(tmp_path / "in")
    summary = run(artifact, tmp_path / "in", tmp_path / "out", id_column="id", on_bad_row="skip", batch_rows=3)
    rejects = pq.read_table(tmp_path / "out" / "_rejects.parquet")
    assert dict(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist())) == expected
    ids, vectors = embeddings(tmp_path / "out")
    assert ids.tolist() == [1, 3, 4, 5, 7, 12]
    np.testing.assert_allclose(vectors, embedder.encode(["nurse", "care", "red", "java", "world", "senior nurse"]),
                               rtol=0, atol=ATOL)
    assert (summary["rows_read"], summary["rows_written"], summary["rejected_rows"]) == (12, 6, 6)
    assert not (tmp_path / "out" / "_rejects").exists()  # the parts were merged, then removed


def test_jsonl_with_mixed_types_names_the_file(artifact: Path, tmp_path: Path) -> None:
    """pyarrow's JSON reader needs one type per column: strings and a number fail the file."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "nurse"}\n{"id": 2, "text": 5}\n')
    with pytest.raises(InputError, match=r"in\.jsonl: cannot read it as json: .*changed from string to number"):
        run(artifact, source, tmp_path / "out", id_column="id", on_bad_row="skip")


# -- resume, crashes and finished runs ------------------------------------------------------
class FailingEmbedder(Embedder):
    """An Embedder that records the texts (as token ids) that it runs through the model (`pool`,
    which `TableEmbedder` calls on prepared texts) and raises on its `fail_at`-th call."""

    def __init__(self, path: Path, fail_at: int | None = None) -> None:
        super().__init__(path)
        self.fail_at, self.calls, self.pooled = fail_at, 0, []

    def pool(self, prepared, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("simulated failure")
        self.pooled += [tuple(prepared.row_ids(i).tolist()) for i in range(len(prepared))]
        return super().pool(prepared, *args, **kwargs)

    def tokens(self, texts: list[str]) -> list[tuple[int, ...]]:
        """`texts` as `pooled` records them."""
        return [tuple(row) for row in self.tokenize(texts)]


def test_resume_after_a_failure_embeds_only_the_remaining_rows(artifact: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "LOOKAHEAD_SHARDS", 1)  # each shard embeds its own texts
    table = rows(1000)  # distinct texts: each row is one encoded text
    source = write(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    first = FailingEmbedder(artifact, fail_at=4)  # one encode call per shard of 100 rows
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(first, source, out, id_column="id", batch_rows=100)
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-00000{i}.parquet" for i in range(3)]
    assert not list(out.glob(".*")) and not (out / "_summary.json").exists()
    second = FailingEmbedder(artifact)
    summary = run(second, source, out, id_column="id", batch_rows=100)
    texts = table["text"].to_pylist()
    assert sorted(second.pooled) == sorted(second.tokens(texts[300:]))  # only the rows of uncommitted shards
    assert summary["rows_this_run"] == 700 and summary["rows_written"] == 1000
    ids, vectors = embeddings(out)
    assert ids.tolist() == table["id"].to_pylist()  # every id exactly once
    run(artifact, source, tmp_path / "reference", id_column="id", batch_rows=100)
    assert np.array_equal(vectors, embeddings(tmp_path / "reference")[1])


def test_new_texts_of_the_next_shards_are_embedded_together(artifact: Path, tmp_path: Path) -> None:
    # LOOKAHEAD_SHARDS shards' new texts go to the model in one call (full, length-sorted batches);
    # the shards are still committed one by one, so a failure in the next group keeps this one.
    table = rows(1000)  # distinct texts
    source = write(table, tmp_path / "in.parquet")
    clean = FailingEmbedder(artifact)
    summary = run(clean, source, tmp_path / "clean", id_column="id", batch_rows=100)
    assert clean.calls == -(-10 // local.LOOKAHEAD_SHARDS)  # one call per group of shards
    assert sorted(clean.pooled) == sorted(clean.tokens(table["text"].to_pylist())) and summary["texts_encoded"] == 1000
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated failure"):
        run(FailingEmbedder(artifact, fail_at=2), source, out, id_column="id", batch_rows=100)
    committed = local.LOOKAHEAD_SHARDS
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:06d}.parquet" for i in range(committed)]
    second = FailingEmbedder(artifact)
    summary = run(second, source, out, id_column="id", batch_rows=100)
    assert sorted(second.pooled) == sorted(second.tokens(table["text"].to_pylist()[100 * committed:]))
    assert summary["rows_written"] == 1000 and summary["texts_encoded"] == 1000
    ids, vectors = embeddings(out)
    assert ids.tolist() == table["id"].to_pylist()
    np.testing.assert_allclose(vectors, embeddings(tmp_path / "clean")[1], rtol=0, atol=1e-6)


KILL_MID_WRITE = textwrap.dedent("""
    import io, os, signal, sys
    from jobbert_onnx.datasets import embed_dataset
    from jobbert_onnx.datasets.output import OutputFolder

    write = OutputFolder._write

    def die_halfway(self, name, fill):
        if name != "part-000003.parquet":
            return write(self, name, fill)
        def half(f):
            buffer = io.BytesIO()
            fill(buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs
        return write(self, name, half)

    OutputFolder._write = die_halfway
    embed_dataset(sys.argv[1], sys.argv[2], sys.argv[3], id_column="id", batch_rows=50, show_progress=False)
""")


def test_hard_kill_mid_write_leaves_no_half_shard(artifact: Path, tmp_path: Path) -> None:
    table = rows(400, distinct=90)
    source = write(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(artifact), str(source), str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-00000{i}.parquet" for i in range(3)]
    partial = list(out.glob(".part-000003.parquet.*.partial"))
    assert len(partial) == 1  # the half-written file is there, under a name no reader takes
    assert pq.read_table(out).num_rows == 150
    summary = run(artifact, source, out, id_column="id", batch_rows=50)
    assert summary["rows_this_run"] == 250 and not partial[0].exists()
    ids, vectors = embeddings(out)
    assert ids.tolist() == table["id"].to_pylist()
    run(artifact, source, tmp_path / "reference", id_column="id", batch_rows=50)
    assert np.array_equal(vectors, embeddings(tmp_path / "reference")[1])


def test_finished_run_writes_nothing_when_run_again(artifact: Path, tmp_path: Path) -> None:
    source = write(rows(90, distinct=20), tmp_path / "in.csv")
    summary = run(artifact, source, tmp_path / "out", id_column="id", batch_rows=40, on_bad_row="skip")
    before = listing(tmp_path / "out")
    # no model is loaded either: a FailingEmbedder that fails at once is never called
    assert run(FailingEmbedder(artifact, fail_at=1), source, tmp_path / "out", id_column="id", batch_rows=40,
               on_bad_row="skip") == summary
    assert listing(tmp_path / "out") == before


def test_output_from_another_artifact_head_or_input_is_refused(artifact: Path, tmp_path: Path) -> None:
    source = write(rows(30), tmp_path / "in.parquet")
    out = tmp_path / "out"
    run(artifact, source, out, id_column="id", batch_rows=10)
    (out / "_summary.json").unlink()  # unfinished or finished, the folder is refused all the same
    other = tmp_path / "other-artifact"
    toy_artifact.build(other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source"]["revision"] = "another"
    (other / "manifest.json").write_text(json.dumps(manifest))
    before = listing(out)
    with pytest.raises(OutputFolderError, match="artifact_sha256"):
        run(other, source, out, id_column="id", batch_rows=10)
    with pytest.raises(OutputFolderError, match="head 'anchor', this run uses 'positive'"):
        run(artifact, source, out, id_column="id", batch_rows=10, head="positive")
    with pytest.raises(OutputFolderError, match="normalize False, this run uses True"):
        run(artifact, source, out, id_column="id", batch_rows=10, normalize=True)
    with pytest.raises(OutputFolderError, match="--batch-rows 10"):
        run(artifact, source, out, id_column="id", batch_rows=20)
    assert listing(out) == before
    write(rows(31), source)
    with pytest.raises(OutputFolderError, match="input changed"):
        run(artifact, source, out, id_column="id", batch_rows=10)
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="not empty and has no _run.json"):
        run(artifact, source, tmp_path / "stranger", id_column="id")


def test_argument_errors(artifact: Path, tmp_path: Path) -> None:
    source = write(rows(3), tmp_path / "in.parquet")
    with pytest.raises(ValueError, match="workers applies to the Ray engine"):
        run(artifact, source, tmp_path / "out", workers=2)
    with pytest.raises(ValueError, match="Ray engine needs an id column"):
        run(artifact, source, tmp_path / "out", engine="ray")
    with pytest.raises(UnknownHeadError, match="available heads: anchor, positive"):
        run(artifact, source, tmp_path / "out", head="negative")
    with pytest.raises(ValueError, match="batch_rows=0"):
        run(artifact, source, tmp_path / "out", batch_rows=0)
    assert not (tmp_path / "out").exists()


# -- the command and memory -----------------------------------------------------------------
def test_command(artifact: Path, tmp_path: Path) -> None:
    source = write(rows(60, distinct=10), tmp_path / "in.jsonl")
    command = [sys.executable, "-m", "jobbert_onnx.cli", "embed-dataset", str(artifact), str(source)]
    done = subprocess.run(command + [str(tmp_path / "out"), "--id-column", "id", "--batch-rows", "25",
                                     "--head", "positive", "--normalize"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert (summary["rows_written"], summary["head"], summary["normalize"]) == (60, "positive", True)
    assert "Embedding: 60.0row" in done.stderr and "row/s" in done.stderr  # the tqdm bar, in rows
    bad = tmp_path / "bad.csv"
    bad.write_text("id,title\n1,nurse\n")
    failed = subprocess.run(command[:-1] + [str(bad), str(tmp_path / "out-bad"), "--id-column", "id", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"jobbert-onnx: error: bad row id=1, input row 0 in {bad}: no column 'text'. Fix the input, or pass "
        f"--on-bad-row skip (on_bad_row='skip') to write such rows to the rejects file and go on."]


def test_the_command_loads_without_pyarrow() -> None:
    """The main CLI adds embed-dataset to its parser: that must not import pyarrow (a runtime-only install)."""
    code = ("import argparse, sys; from jobbert_onnx.datasets.cli import add_parser; "
            "add_parser(argparse.ArgumentParser().add_subparsers()); print('pyarrow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


MEASURE_MEMORY = textwrap.dedent("""
    import re, sys
    from pathlib import Path
    import pyarrow as pa
    from jobbert_onnx.datasets import embed_dataset, inputs

    # Smaller reads, so that the smaller input too fills them: Parquet batches and CSV blocks, of
    # which pyarrow reads a fixed number ahead.
    inputs.BATCH_ROWS = 2000
    embed_dataset(sys.argv[1], sys.argv[2], sys.argv[3], id_column="id", batch_rows=2000, cache_mb=1, max_row_mb=1 / 64,
                  show_progress=False)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would start at pytest's size
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
    print(pa.default_memory_pool().max_memory(), peak_kb * 1024)
""")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_memory_does_not_grow_with_the_input(artifact: Path, tmp_path: Path, suffix: str) -> None:
    """Peak Arrow memory and peak RSS of the whole process, at 20k and at 200k rows."""
    peaks = {}
    for n in (20_000, 200_000):
        table = pa.concat_tables(rows(10_000, distinct=2000, first_id=start) for start in range(0, n, 10_000))
        source = tmp_path / f"in{n}{suffix}"
        if suffix == ".parquet":
            pq.write_table(table, source, row_group_size=10_000)
        else:
            write(table, source)
        del table
        done = subprocess.run([sys.executable, "-c", MEASURE_MEMORY, str(artifact), str(source),
                               str(tmp_path / f"out{n}")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        peaks[n] = [int(v) for v in done.stdout.split()]
        assert json.loads((tmp_path / f"out{n}" / "_summary.json").read_text())["rows_written"] == n
    (arrow_small, rss_small), (arrow_big, rss_big) = peaks[20_000], peaks[200_000]
    assert arrow_big <= 1.25 * arrow_small + 2**20, peaks  # Arrow buffers: a few blocks and one shard
    assert rss_big <= rss_small + 16 * 2**20, peaks  # the process: 10x the rows, not 10x the memory


# -- texts the runtime refuses ----------------------------------------------------------------
LONG_TEXT = "x" * 70_000  # one "word" past the runtime's whole-text limit, with no cut proven safe


@pytest.mark.parametrize("dedup", [True, False])
def test_table_embedder_text_too_long_is_a_bad_row(embedder: Embedder, dedup: bool) -> None:
    with pytest.raises(TextTooLongError):  # the runtime really refuses it
        embedder.encode([LONG_TEXT])
    table = pa.table({"id": [1, 2, 3, 4, 5], "text": ["nurse", LONG_TEXT, "care", LONG_TEXT + "y", "nurse"]})
    skip = TableEmbedder(embedder, text_column="text", id_column="id", on_bad_row="skip", dedup=dedup)
    result = skip(table)
    assert result.rejects["id"].to_pylist() == [2, 4]
    assert all(r.startswith("a text of 70,00") and "cannot be embedded" in r for r in result.rejects["reason"].to_pylist())
    assert result.table["id"].to_pylist() == [1, 3, 5]
    got = np.asarray(result.table["embedding"].combine_chunks().flatten()).reshape(3, -1)
    np.testing.assert_allclose(got, embedder.encode(["nurse", "care", "nurse"]), rtol=0, atol=ATOL)
    assert (result.stats.rows, result.stats.written, result.stats.rejected) == (5, 3, 2)
    again = skip(table)  # a refused text is never cached as if it had a vector
    assert again.rejects["id"].to_pylist() == [2, 4] and again.table["id"].to_pylist() == [1, 3, 5]
    edges = pa.table({"id": [6, 7, 8, 9], "text": [LONG_TEXT + "a", LONG_TEXT + "b", "senior nurse", LONG_TEXT + "c"]})
    result = skip(edges)  # refused texts first, one after another, and last
    assert result.rejects["id"].to_pylist() == [6, 7, 9] and result.table["id"].to_pylist() == [8]
    np.testing.assert_allclose(np.asarray(result.table["embedding"].combine_chunks().flatten()),
                               embedder.encode(["senior nurse"])[0], rtol=0, atol=ATOL)
    assert result.stats.encoded == 1
    if dedup:  # the lookahead leaves refused texts to the batch, which reports them
        assert skip.prefetch([table, edges, pa.table({"text": [LONG_TEXT, "data engineer"]})]) == 1
    fail = TableEmbedder(embedder, text_column="text", id_column="id", dedup=dedup)
    with pytest.raises(BadRowError, match=r"bad row id=2, input row 10: a text of 70,000 characters cannot be "
                                          r"embedded: .*\. Fix the input, or pass --on-bad-row skip"):
        fail(table, first_row=9)


def test_text_too_long_fails_or_goes_to_the_rejects_file(artifact: Path, embedder: Embedder, tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2, 3], "text": ["nurse", LONG_TEXT, "care"]})
    source = write(table, tmp_path / "in.parquet")
    with pytest.raises(BadRowError, match=r"bad row id=2, input row 1 in .*in\.parquet: a text of 70,000 characters"):
        run(artifact, source, tmp_path / "fail", id_column="id")
    assert not (tmp_path / "fail" / "_summary.json").exists()
    summary = run(artifact, source, tmp_path / "skip", id_column="id", on_bad_row="skip")
    rejects = pq.read_table(tmp_path / "skip" / "_rejects.parquet")
    assert rejects["id"].to_pylist() == [2] and "cannot be embedded" in rejects["reason"][0].as_py()
    ids, vectors = embeddings(tmp_path / "skip")
    assert ids.tolist() == [1, 3]
    np.testing.assert_allclose(vectors, embedder.encode(["nurse", "care"]), rtol=0, atol=ATOL)
    assert (summary["rows_read"], summary["rows_written"], summary["rejected_rows"]) == (3, 2, 1)
