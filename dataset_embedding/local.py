"""The local engine: one process streams the input through one `Embedder` into Parquet shards.

Shard k holds input rows [k * rows_per_shard, (k + 1) * rows_per_shard), in file order. Each
shard is written whole and renamed (the commit), so a run that is stopped, killed or crashes
leaves shards 0..k-1 complete and nothing else; started again, it skips the rows of those
shards (reading, not embedding them) and goes on with shard k. Memory holds the texts and ids
of `LOOKAHEAD_SHARDS` shards and the vectors of one, whatever the input's size, plus the set of
ids seen so far (`ids.SeenIds`, 8 bytes per integer id, 16 per other id).

With an id column, the first row with an id keeps it: a later row with the same id is a bad row
("id ... is repeated"), and so is a null id. The ids of the skipped rows are read again on resume,
so a resumed run makes the same choices as one that never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from .ids import SeenIds
from .inputs import InputFiles, Piece
from .output import OutputFolder
from .table import KNOWN_BAD_COLUMN, BatchStats, TableEmbedder

# Shards whose new texts are embedded together (`TableEmbedder.prefetch`): the input of this many
# shards (texts and ids only) is held at once; shards are still written, and committed, one by one.
LOOKAHEAD_SHARDS = 8


def shards(pieces: Iterable[Piece], rows_per_shard: int, skip_rows: int = 0,
           skipped: Callable[[pa.Table], None] = lambda table: None) -> Iterator[tuple[int, list[tuple[int, Piece]]]]:
    """Regroup `pieces` into shards of `rows_per_shard` rows (the last may be shorter), skipping
    the first `skip_rows` rows (handed to `skipped`). Yields (shard index, [(input row of the
    piece, piece), ...]); a shard may span files, so it is a list of pieces, each from one file."""
    row, index = 0, skip_rows // rows_per_shard
    current: list[tuple[int, Piece]] = []
    filled = 0
    for piece in pieces:
        offset = 0
        n = piece.table.num_rows
        if row + n <= skip_rows:  # the whole piece was committed before
            skipped(piece.table)
            row += n
            continue
        if row < skip_rows:
            offset = skip_rows - row
            skipped(piece.table.slice(0, offset))
            row = skip_rows
        while offset < n:
            take = min(rows_per_shard - filled, n - offset)
            current.append((row, Piece(piece.path, piece.table.slice(offset, take))))
            row, offset, filled = row + take, offset + take, filled + take
            if filled == rows_per_shard:
                yield index, current
                index, current, filled = index + 1, [], 0
    if current:
        yield index, current


def run(table_embedder: TableEmbedder, inputs: InputFiles, out: OutputFolder, rows_per_shard: int,
        show_progress: bool = True) -> dict[str, Any]:
    """Embed `inputs` into `out` from its first uncommitted shard on; return the summary."""
    started = time.perf_counter()
    done_shards = out.committed_shards()
    skip = done_shards * rows_per_shard
    pieces = inputs.pieces(table_embedder.text_column, table_embedder.id_column)
    id_column = table_embedder.id_column
    # Every id read so far, committed rows' included, to find repeated ones: it grows with the
    # input, 8 or 16 bytes per distinct id (SeenIds).
    seen = SeenIds()
    this_run = 0
    total = inputs.count_rows()
    with tqdm(total=total, initial=min(skip, total) if total is not None else skip, unit="row",
              unit_scale=True, desc="Embedding", disable=not show_progress, smoothing=0.1) as bar:
        skipped = (lambda table: seen.repeats(table[id_column])) if id_column is not None else (lambda table: None)
        for group in _groups(shards(pieces, rows_per_shard, skip, skipped), LOOKAHEAD_SHARDS):
            prefetched = table_embedder.prefetch([piece.table for _, parts in group for _, piece in parts])
            for index, parts in group:
                results = []
                for first, path, table in _by_file(parts):  # in input order: the first row with an id keeps it
                    if id_column is not None:
                        table = mark_repeats(table, id_column, seen)
                    results.append(table_embedder(table, first_row=first, source=path))
                stats = BatchStats(encoded=prefetched)  # the group's prefetch counts with its first shard
                prefetched = 0
                for result in results:
                    stats += result.stats
                out.write_shard(index, _concat([r.table for r in results]), _concat([r.rejects for r in results]),
                                stats)
                this_run += stats.rows
                bar.update(stats.rows)
    return out.finish(table_embedder.id_name, "local", time.perf_counter() - started, this_run)


def mark_repeats(table: pa.Table, id_column: str, seen: SeenIds) -> pa.Table:
    """`table` with a reason in `KNOWN_BAD_COLUMN` for each row whose id an earlier row has."""
    repeats = seen.repeats(table[id_column])
    if not repeats.any():
        return table
    ids = table[id_column].to_pylist()
    known = table[KNOWN_BAD_COLUMN].to_pylist() if KNOWN_BAD_COLUMN in table.column_names else [None] * len(ids)
    reasons = [k if k is not None or not r else f"id {i!r} is repeated: an earlier row has it (the first row "
               f"with an id is kept)" for i, r, k in zip(ids, repeats.tolist(), known)]
    column = pa.array(reasons, pa.string())
    if KNOWN_BAD_COLUMN in table.column_names:
        return table.set_column(table.schema.get_field_index(KNOWN_BAD_COLUMN), KNOWN_BAD_COLUMN, column)
    return table.append_column(KNOWN_BAD_COLUMN, column)


def _groups(items: Iterator, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last may be shorter), read lazily."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _by_file(parts: list[tuple[int, Piece]]) -> Iterator[tuple[int, str, pa.Table]]:
    """Join a shard's consecutive pieces of one file, so that its repeated texts are embedded once."""
    start = 0
    while start < len(parts):
        end = start + 1
        while end < len(parts) and parts[end][1].path == parts[start][1].path:
            end += 1
        yield parts[start][0], parts[start][1].path, _concat([piece.table for _, piece in parts[start:end]])
        start = end


def _concat(tables: list[pa.Table]) -> pa.Table:
    # promote: a JSON block with malformed lines has a KNOWN_BAD_COLUMN the others lack
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
