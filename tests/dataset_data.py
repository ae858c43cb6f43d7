"""Inputs for the dataset tests (no tests here): rows of the toy artifact's words as Parquet, CSV or JSON lines."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tests import toy_artifact


def distinct_texts(n: int) -> list[str]:
    """`n` different texts of toy words (14**3 = 2744 at most), in a fixed order."""
    combos = itertools.islice(itertools.product(toy_artifact.WORDS, repeat=3), n)
    texts = [" ".join(c) for c in combos]
    assert len(texts) == n
    return texts


def rows(n: int, distinct: int | None = None, first_id: int = 1000) -> pa.Table:
    """`n` rows: `id` (first_id, first_id + 1, ...) and `text`, repeating `distinct` texts when given."""
    texts = distinct_texts(distinct or n)
    rng = np.random.default_rng(n)
    order = rng.integers(0, len(texts), n) if distinct else np.arange(n)
    return pa.table({"id": np.arange(first_id, first_id + n), "text": [texts[i] for i in order]})


def write(table: pa.Table, path: Path) -> Path:
    """Write `table` as the format `path`'s suffix names (.parquet, .csv, .jsonl, .csv.gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(table, path, row_group_size=max(1, table.num_rows // 3))
    elif name.endswith(".csv") or name.endswith(".csv.gz"):
        with pa.CompressedOutputStream(str(path), "gzip") if name.endswith(".gz") else pa.OSFile(str(path), "wb") as f:
            pacsv.write_csv(table, f)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()), encoding="utf-8")
    else:
        raise ValueError(path)
    return path


def embeddings(folder: Path, id_column: str = "id") -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of an output dataset, sorted by id."""
    table = pq.read_table(folder).sort_by(id_column)
    vectors = np.asarray(table["embedding"].combine_chunks().flatten()).reshape(table.num_rows, -1)
    return table[id_column].to_numpy(), vectors
