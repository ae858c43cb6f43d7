"""The engine-neutral piece: an Arrow table of texts in, a table of ids and embeddings out.

Both engines (local and Ray) call `TableEmbedder` on each batch of rows; a Spark `mapInPandas`
wrapper is a few lines on top of it (docs/datasets.md). It checks every row, prepares
(tokenizes) each distinct text of the batch once, embeds each distinct text once (and texts seen in
recent batches not at all, from the runtime's bounded `EmbeddingCache`, keyed as the server keys
it: `PreparedTexts.keys(artifact_id, head)`), and returns

- `table`: the id column (or `row`, the input row number, when there is no id column) and
  `embedding` as `fixed_size_list<float32>[dim]`, with the artifact's sha256, the head and the
  normalize flag in the schema metadata (so in every Parquet file written from it);
- `rejects`: the bad rows' ids and why (only with `on_bad_row="skip"`; otherwise the first bad
  row raises `BadRowError`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobbert_onnx.embed_files import InputError  # the one error of unreadable input, `embed`'s too
from jobbert_onnx.runtime import JobbertOnnxError, TextTooLongError, unit_rows
from jobbert_onnx.runtime.cache import EmbeddingCache
from jobbert_onnx.runtime.manifest import MANIFEST_NAME, sha256_of
from jobbert_onnx.runtime.prepared import PreparedTexts

from .defaults import DatasetSettings, check_values

if TYPE_CHECKING:
    from jobbert_onnx.runtime import Embedder

ROW_COLUMN = "row"
EMBEDDING_COLUMN = "embedding"
REASON_COLUMN = "reason"
# A column the readers and the local engine may add to an input table: a row's reason to be bad,
# known before the table reaches `TableEmbedder` (a malformed JSON line, a repeated id); null for
# a row to check as usual. No input column is read under this name.
KNOWN_BAD_COLUMN = "__jobbert_onnx_bad_row__"
# Keys of the Parquet file metadata (bytes, as Arrow stores them).
META_PREFIX = "jobbert_onnx."
META_ARTIFACT = b"jobbert_onnx.artifact_sha256"
META_HEAD = b"jobbert_onnx.head"
META_NORMALIZE = b"jobbert_onnx.normalize"
META_DIMENSION = b"jobbert_onnx.dimension"
META_PROMPT = b"jobbert_onnx.prompt_name"
META_STATS = b"jobbert_onnx.stats"
# `TableEmbedder.prefetch` prepares the lookahead's distinct texts this many at a time, and stops
# once it has found as many new ones as it may embed.
PREFETCH_CHUNK = 4096


class BadRowError(JobbertOnnxError):
    """A row that cannot be embedded: a null or non-string text, a null or repeated id, a missing
    text column, a malformed JSON line, or a text the runtime refuses (`TextTooLongError`: too long,
    and no cut is proven safe)."""


def artifact_sha256(artifact: str | Path) -> str:
    """sha256 of the artifact's manifest.json, which itself holds every file's sha256 (what
    `Embedder.artifact_id` is)."""
    return sha256_of(Path(artifact) / MANIFEST_NAME)


@dataclass
class BatchStats:
    """Counts for one batch, or summed over many."""

    rows: int = 0  # rows read
    written: int = 0  # rows embedded
    rejected: int = 0  # bad rows (only with on_bad_row="skip")
    unique_texts: int = 0  # distinct texts, counted per batch
    encoded: int = 0  # texts sent to the model: distinct per batch and not in the cache
    cache_hits: int = 0  # distinct texts of a batch found in the cache (those `prefetch` put there included)
    cache_misses: int = 0  # ... and not found there (0 and 0 with the cache off)

    def __iadd__(self, other: BatchStats) -> BatchStats:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class EmbeddedBatch:
    table: pa.Table  # id column + embedding, with the metadata above
    rejects: pa.Table  # id column + reason; empty when every row was good
    stats: BatchStats


class TableEmbedder:
    """Embed the text column of Arrow tables with one `Embedder`.

    Args:
        embedder: the loaded artifact.
        text_column: the column holding the texts.
        id_column: the column identifying each row, copied to the output; None: the output gets
            `row`, the input row number (`first_row` of each call plus the row's position).
        head, normalize, batch_size, prompt_name: as in `Embedder.encode` (prompt_name is passed
            only when given).
        on_bad_row: 'fail' raises `BadRowError` at the first bad row; 'skip' returns bad rows
            in `EmbeddedBatch.rejects`.
        cache_mb: size of the cache of embeddings across batches (0: none).
        dedup: embed each distinct text of a batch once (False only to measure what it saves).
    Defaults and allowed values are those of `DatasetSettings` (datasets.defaults).
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        text_column: str,
        id_column: str | None = None,
        head: str | None = None,
        normalize: bool = DatasetSettings.normalize,
        batch_size: int = DatasetSettings.batch_size,
        on_bad_row: str = DatasetSettings.on_bad_row,
        cache_mb: float = DatasetSettings.cache_mb,
        dedup: bool = DatasetSettings.dedup,
        prompt_name: str | None = None,
    ) -> None:
        check_values({"batch_size": batch_size, "on_bad_row": on_bad_row, "cache_mb": cache_mb})
        self.embedder = embedder
        self.text_column = text_column
        self.id_column = id_column
        self.id_name = id_column or ROW_COLUMN
        self.head = head or embedder.default_head
        self.dimension = embedder.dimension(self.head)  # raises UnknownHeadError for a wrong head
        self.normalize = normalize
        self.batch_size = batch_size
        self.on_bad_row = on_bad_row
        self.dedup = dedup
        self.prompt_name = prompt_name
        self.artifact_id = embedder.artifact_id
        # Raw vectors (before normalize), bounded by bytes only; without dedup, no cache.
        self._cache = EmbeddingCache(int(cache_mb * 2**20) if dedup else 0, sys.maxsize)
        # The cache keys of the texts that the last `prefetch` left in the cache: a batch looks them
        # up without tokenizing them again (so each distinct text of a batch is tokenized once at most).
        self._known: dict[str, bytes] = {}
        metadata = {
            META_ARTIFACT: self.artifact_id.encode(),
            META_HEAD: self.head.encode(),
            META_NORMALIZE: str(normalize).lower().encode(),
            META_DIMENSION: str(self.dimension).encode(),
        }
        if prompt_name is not None:
            metadata[META_PROMPT] = prompt_name.encode()
        self.metadata = metadata

    # -- public --------------------------------------------------------------------------
    def __call__(self, table: pa.Table, first_row: int | None = None, source: str | None = None) -> EmbeddedBatch:
        """Embed `table`'s texts. `first_row`: the input row number of its first row (needed
        without an id column, and named in errors); `source`: where the rows come from (errors)."""
        ids = self._ids(table, first_row, source)
        reasons = self._reasons(table, ids)
        bad = np.array([r is not None for r in reasons], dtype=bool)
        if bad.any() and self.on_bad_row == "fail":
            self._fail(ids, reasons, int(np.flatnonzero(bad)[0]), first_row, source)
        good_rows = np.flatnonzero(~bad)
        texts = self._texts(table).filter(pa.array(~bad)) if len(good_rows) else pa.array([], pa.string())
        hits, misses = self._cache.hits, self._cache.misses
        vectors, unique, encoded, refused = self._embed(texts)
        if refused:  # texts the runtime refuses (TextTooLongError): bad rows too, found only now
            for position, reason in refused.items():
                reasons[good_rows[position]] = reason
            if self.on_bad_row == "fail":
                self._fail(ids, reasons, int(good_rows[min(refused)]), first_row, source)
            vectors = np.delete(vectors, list(refused), axis=0)
            bad[good_rows[list(refused)]] = True
        good = pa.array(~bad)
        rejects = pa.table({self.id_name: ids.filter(pa.array(bad)),
                            REASON_COLUMN: pa.array([r for r in reasons if r is not None], pa.string())})
        out = pa.table({
            self.id_name: ids.filter(good),
            EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dimension),
        }).replace_schema_metadata(self.metadata)
        stats = BatchStats(rows=table.num_rows, written=out.num_rows, rejected=rejects.num_rows,
                           unique_texts=unique, encoded=encoded, cache_hits=self._cache.hits - hits,
                           cache_misses=self._cache.misses - misses)
        return EmbeddedBatch(out, rejects, stats)

    def _fail(self, ids: pa.Array, reasons: list[str | None], i: int, first_row: int | None,
              source: str | None) -> None:
        raise BadRowError(
            f"bad row {self._describe(ids, i, first_row, source)}: {reasons[i].rstrip('.')}. Fix the input, or pass "
            f"--on-bad-row skip (on_bad_row='skip') to write such rows to the rejects file and go on.")

    def output_schema(self, id_type: pa.DataType) -> pa.Schema:
        """The schema of `table` in every result, for an id column of `id_type`."""
        return pa.schema([pa.field(self.id_name, id_type),
                          pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), self.dimension))],
                         metadata=self.metadata)

    # -- checks --------------------------------------------------------------------------
    def _ids(self, table: pa.Table, first_row: int | None, source: str | None) -> pa.Array:
        if self.id_column is None:
            if first_row is None:
                raise ValueError("without an id column, TableEmbedder needs first_row (the input row number).")
            return pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))
        if self.id_column not in table.column_names:
            where = f" in {source}" if source else ""
            raise InputError(f"no id column {self.id_column!r}{where} (columns: {', '.join(table.column_names)}).")
        return table[self.id_column].combine_chunks()

    def prefetch(self, tables: list[pa.Table]) -> int:
        """Embed, in one call, the distinct texts of `tables` that the cache lacks (up to half its
        capacity, in order of first appearance), and cache them; returns how many were embedded.

        Calling it on the next few batches before embedding them one by one lets their new texts
        run sorted by length in full batches: embedding each batch's few new texts on its own runs
        them in small, padded batches (`bench/results/datasets.md`). Rows that are not plain strings, and
        texts the runtime refuses, are left to the per-batch call, which reports them. Lookups here
        are not counted as cache hits or misses: the per-batch calls count theirs. The keys of the
        texts it leaves in the cache are kept until the next call, so that the per-batch calls do not
        tokenize those texts again.
        """
        room = self._cache.capacity(self.dimension) // 2
        self._known = {}
        if not self.dedup or room == 0:
            return 0
        texts: dict[str, None] = {}
        for table in tables:
            if self.text_column not in table.column_names:
                continue
            column = self._texts(table)
            if _holds_strings(column.type):
                texts.update(dict.fromkeys(pc.unique(column.drop_null()).to_pylist()))
        distinct = list(texts)
        del texts
        new: dict[bytes, None] = {}  # keys to embed, in order of first appearance
        parts = []
        for start in range(0, len(distinct), PREFETCH_CHUNK):  # prepared a chunk at a time, up to `room` new
            chunk = distinct[start:start + PREFETCH_CHUNK]
            prepared, kept, _ = self._prepare_all(chunk)
            rows = []
            for i, key in enumerate(prepared.keys(self.artifact_id, self.head)):
                if key in new or key in self._cache:
                    self._known[chunk[kept[i]]] = key
                elif len(new) < room:
                    new[key] = None
                    rows.append(i)
                    self._known[chunk[kept[i]]] = key
            if rows:
                parts.append(prepared.select(rows))
            if len(new) >= room:
                break
        if not new:
            return 0
        prepared = PreparedTexts.concat(parts)
        vectors = self._run(prepared)
        counts = prepared.counts
        for i, key in enumerate(new):
            self._cache.put(key, vectors[i], counts[i])
        return len(new)

    def _reasons(self, table: pa.Table, ids: pa.Array) -> list[str | None]:
        """Why each row cannot be embedded, or None for a good row."""
        n = table.num_rows
        if self.text_column not in table.column_names:
            reasons: list[str | None] = [f"no column {self.text_column!r}"] * n
        else:
            texts = self._texts(table)
            if _holds_strings(texts.type) or pa.types.is_null(texts.type):
                wrong_type = None
            else:
                wrong_type = f"text is {texts.type}, not a string"
            text_null = texts.is_null().to_numpy(zero_copy_only=False)
            id_null = ids.is_null().to_numpy(zero_copy_only=False)
            reasons = [None] * n
            for i in np.flatnonzero(text_null | id_null | (wrong_type is not None)):
                reasons[i] = "id is null" if id_null[i] else "text is null" if text_null[i] else wrong_type
        if KNOWN_BAD_COLUMN in table.column_names:  # found before (a malformed line, a repeated id): say that
            for i, reason in enumerate(table[KNOWN_BAD_COLUMN].to_pylist()):
                if reason is not None:
                    reasons[i] = reason
        return reasons

    def _texts(self, table: pa.Table) -> pa.Array:
        texts = table[self.text_column].combine_chunks()
        if pa.types.is_dictionary(texts.type):
            texts = texts.dictionary_decode()
        if pa.types.is_string_view(texts.type):
            texts = texts.cast(pa.string())
        return texts

    def _describe(self, ids: pa.Array, i: int, first_row: int | None, source: str | None) -> str:
        parts = []
        if self.id_column is not None:
            parts.append(f"{self.id_column}={ids[i].as_py()!r}")
        if first_row is not None:
            parts.append(f"input row {first_row + i}")
        text = ", ".join(parts) or f"#{i} of its batch"
        return f"{text} in {source}" if source else text

    # -- embedding -----------------------------------------------------------------------
    def _prepare_all(self, texts: list[str]) -> tuple[PreparedTexts, list[int], dict[int, str]]:
        """`texts` prepared (`Embedder.prepare`), but for those the runtime refuses (`TextTooLongError`):
        (the prepared texts, the position in `texts` of each, {position: reason} of the refused).
        The runtime names the first such text before it returns anything, so after each refusal the
        texts before it are prepared again, and the rest go on from the text after it."""
        parts, kept, refused = [], [], {}
        start = 0
        while start < len(texts):
            try:
                parts.append(self.embedder.prepare(texts[start:], prompt_name=self.prompt_name))
                kept.extend(range(start, len(texts)))
                break
            except TextTooLongError as exc:
                if exc.index is None:
                    raise
                bad = start + exc.index
                refused[bad] = exc.detail
                if bad > start:  # the texts before the first refused one are fine
                    parts.append(self.embedder.prepare(texts[start:bad], prompt_name=self.prompt_name))
                    kept.extend(range(start, bad))
                start = bad + 1
        return PreparedTexts.concat(parts), kept, refused

    def _run(self, prepared: PreparedTexts) -> np.ndarray:
        """Raw (unnormalized) vectors of `prepared`, from the model: the encoder and pooling in
        batches sorted by length, then the head, exactly as `Embedder.encode` runs them."""
        if len(prepared) == 0:
            return np.zeros((0, self.dimension), np.float32)
        return self.embedder.apply_head(self.embedder.pool(prepared, self.batch_size), self.head)

    def _cached_or_run(self, keys: list[bytes], tokens: Callable[[list[int]], PreparedTexts]
                       ) -> tuple[np.ndarray, int]:
        """Raw vectors of the texts of cache keys `keys`, each distinct key looked up in the cache
        once; the misses, tokenized by `tokens(positions in keys)`, run together (`_run`) and are
        cached. Returns (vectors in `keys`' order, texts run)."""
        first: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        vectors = np.empty((len(keys), self.dimension), np.float32)
        missing = []
        for key, i in first.items():
            entry = self._cache.get(key)
            if entry is None:
                missing.append(i)
            else:
                vectors[i] = entry.vector
        if missing:
            prepared = tokens(missing)
            new = self._run(prepared)
            vectors[missing] = new
            for i, vector, count in zip(missing, new, prepared.counts):
                self._cache.put(keys[i], vector, count)
        if len(first) < len(keys):  # texts equal once prepared (e.g. but for surrounding spaces)
            vectors = vectors[[first[key] for key in keys]]
        return vectors, len(missing)

    def _embed(self, texts: pa.Array) -> tuple[np.ndarray, int, int, dict[int, str]]:
        """(vectors in row order, distinct texts, texts embedded, {row: reason} of refused texts);
        refused texts' rows of the vectors are zeros. Each distinct text is tokenized once at most:
        not at all when the last `prefetch` left its embedding in the cache."""
        if len(texts) == 0:
            return np.zeros((0, self.dimension), np.float32), 0, 0, {}
        if not self.dedup:
            prepared, kept, refused = self._prepare_all(texts.to_pylist())
            vectors = np.zeros((len(texts), self.dimension), np.float32)
            vectors[kept] = self._finish(self._run(prepared))
            return vectors, len(texts), len(kept), refused
        encoded = pc.dictionary_encode(texts)
        distinct = encoded.dictionary.to_pylist()
        keys: list[bytes | None] = [self._known.get(text) for text in distinct]
        fresh = [i for i, key in enumerate(keys) if key is None]  # tokenized here
        prepared, kept, refused = self._prepare_all([distinct[i] for i in fresh])
        rows = {fresh[k]: row for row, k in enumerate(kept)}  # distinct text -> its row of `prepared`
        for i, key in zip(rows, prepared.keys(self.artifact_id, self.head)):
            keys[i] = key
        refused_distinct = {fresh[k]: reason for k, reason in refused.items()}
        good = [i for i in range(len(distinct)) if i not in refused_distinct]

        def tokens(positions: list[int]) -> PreparedTexts:
            """The prepared texts of `good[p]` for each p; a text known from `prefetch` whose
            embedding has left the cache since is prepared now (its only tokenization in this batch)."""
            wanted = [good[p] for p in positions]
            again = [i for i in wanted if i not in rows]
            if not again:
                return prepared.select([rows[i] for i in wanted])
            both = PreparedTexts.concat([prepared, self.embedder.prepare([distinct[i] for i in again],
                                                                         prompt_name=self.prompt_name)])
            where = {**rows, **{i: len(prepared) + j for j, i in enumerate(again)}}
            return both.select([where[i] for i in wanted])

        raw, run = self._cached_or_run([keys[i] for i in good], tokens)
        if refused_distinct:
            vectors = np.zeros((len(distinct), self.dimension), np.float32)
            vectors[good] = self._finish(raw)
        else:
            vectors = self._finish(raw)
        indices = encoded.indices.to_numpy()
        refused_rows = {int(r): refused_distinct[int(indices[r])]
                        for r in np.flatnonzero(np.isin(indices, list(refused_distinct)))} if refused_distinct else {}
        return vectors[indices], len(distinct), run, refused_rows

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        """What the cache keeps (raw vectors) as the output wants them: normalized or not."""
        return unit_rows(raw) if self.normalize else raw


def _holds_strings(data_type: pa.DataType) -> bool:
    """Whether a text column (after `TableEmbedder._texts`) holds strings."""
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)
