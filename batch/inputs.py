"""Input datasets: Parquet, CSV and JSON-lines files, folders of them and globs, local or URLs.

`resolve_input` turns what the user typed into a sorted list of files of one format; the
local engine then streams them in record batches (`InputFiles.pieces`), file after file, so
rows are numbered in that order and never all held at once. The Ray engine hands the same
file list to `ray.data.read_*`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from . import filesystems
from .defaults import INPUT_FORMATS
from .table import InputError

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json",
            ".json": "json"}
# pyarrow reads CSV and JSON compressed with these (detected from the suffix).
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_GLOB_CHARS = re.compile(r"[*?\[]")
# CSV and JSON are read in blocks of this size (a row must fit in one), a fixed number of them
# ahead of the consumer: about 40 MB at most, whatever the file's size.
TEXT_BLOCK_BYTES = 1 << 20
BATCH_ROWS = 65_536  # rows per Parquet record batch


@dataclass(frozen=True)
class Piece:
    """Consecutive rows of one input file."""

    path: str
    table: pa.Table


@dataclass(frozen=True)
class InputFiles:
    """The files of one input, in reading order, all of one format."""

    spec: str
    filesystem: pafs.FileSystem
    paths: list[str]
    format: str

    def fingerprint(self) -> list[dict[str, Any]]:
        """Each file's path, size and modification time: what a resumed run must find again."""
        infos = self.filesystem.get_file_info(self.paths)
        return [{"path": i.path, "size": i.size, "mtime_ns": i.mtime_ns} for i in infos]

    def count_rows(self) -> int | None:
        """Total rows from the Parquet footers; None for CSV and JSON (that would mean reading them)."""
        if self.format != "parquet":
            return None
        total = 0
        for path in self.paths:
            with self.filesystem.open_input_file(path) as handle:
                total += pq.read_metadata(handle).num_rows
        return total

    def columns(self, path: str, text_column: str) -> list[str]:
        """The column names of one file (its footer, header or first JSON block)."""
        with self._reader(path, text_column) as (names, _):
            return names

    @contextmanager
    def _reader(self, path: str, text_column: str) -> Iterator[tuple[list[str], Callable]]:
        """(the file's column names, `batches(columns)`: its record batches, read as they are consumed).

        pyarrow's readers keep memory bounded: Parquet without pre-buffering (which reads all the
        row groups' column chunks at once), CSV and JSON in blocks of `TEXT_BLOCK_BYTES`, a fixed
        number of them read ahead.
        """
        try:
            if self.format == "parquet":
                with self.filesystem.open_input_file(path) as handle:
                    file = pq.ParquetFile(handle, pre_buffer=False)
                    yield file.schema_arrow.names, lambda columns: file.iter_batches(BATCH_ROWS, columns=columns)
                return
            with self.filesystem.open_input_stream(path, compression="detect") as stream:
                if self.format == "csv":  # a CSV field of the text column stays a string: no type guessing
                    reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES),
                                            convert_options=pacsv.ConvertOptions(column_types={text_column: pa.string()}))
                else:
                    reader = pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=TEXT_BLOCK_BYTES))
                yield reader.schema.names, lambda columns: (batch.select(columns) for batch in reader)
        except (pa.ArrowInvalid, OSError) as exc:  # e.g. a JSON field holding strings and numbers
            raise InputError(f"{path}: cannot read it as {self.format}: {exc}") from None

    def pieces(self, text_column: str, id_column: str | None) -> Iterator[Piece]:
        """Stream the id and text columns of every file in record batches, file after file.

        A file without the id column raises `InputError`; a file without the text column yields
        its rows without it (each is then a bad row). Ids are cast to the first file's id type.
        """
        id_type: pa.DataType | None = None
        for path in self.paths:
            with self._reader(path, text_column) as (names, batches):
                if id_column is not None and id_column not in names:
                    raise InputError(f"{path}: no id column {id_column!r} (columns: {', '.join(names)}).")
                for batch in batches([c for c in (id_column, text_column) if c is not None and c in names]):
                    table = pa.Table.from_batches([batch])
                    if id_column is not None:
                        id_type = id_type or table.schema.field(id_column).type
                        table = _cast_ids(table, id_column, id_type, path)
                    yield Piece(path, table)


def _cast_ids(table: pa.Table, id_column: str, id_type: pa.DataType, path: str) -> pa.Table:
    column = table[id_column]
    if column.type == id_type:
        return table
    try:
        return table.set_column(table.schema.get_field_index(id_column), id_column, column.cast(id_type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"{path}: ids of type {column.type} do not convert to {id_type}, the id type of the "
                         f"first file; give every file the same id type.") from None


def format_of(path: str) -> str | None:
    """The format a file name says ('data.csv.gz' -> 'csv'), or None."""
    name = path.rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    dot = name.rfind(".")
    return SUFFIXES.get(name[dot:]) if dot >= 0 else None


def _hidden(relative: str) -> bool:
    """Files and folders starting with '_' or '.' (_SUCCESS, .crc, _rejects/) are not data."""
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def _glob_regex(pattern: str) -> re.Pattern:
    """`*` and `?` within one folder, `**` across folders, `[abc]` a character class."""
    out = []
    for token in re.split(r"(\*\*/?|\*|\?|\[[^\]/]+\])", pattern):
        if token.startswith("**"):
            out.append("(?:.*/)?" if token == "**/" else ".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        elif token.startswith("[") and token.endswith("]") and len(token) > 2:
            negate = token[1] == "!"
            out.append(("[^" if negate else "[") + token[2 if negate else 1 : -1].replace("\\", "\\\\") + "]")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out) + r"\Z")


def _list_files(filesystem: pafs.FileSystem, folder: str) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    base = folder.rstrip("/") + "/"
    return [i.path for i in infos if i.type == pafs.FileType.File and not _hidden(i.path[len(base):])]


def resolve_input(spec: str, input_format: str | None = None) -> InputFiles:
    """The files `spec` names: one file, a folder (searched recursively), or a glob, as a local
    path or URL. Their format comes from their suffixes (.parquet, .csv, .jsonl/.json/.ndjson,
    optionally compressed) or `input_format`; one input holds one format."""
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise ValueError(f"input format {input_format!r}: must be one of {', '.join(INPUT_FORMATS)}.")
    filesystem, path = filesystems.resolve(spec)
    glob = _GLOB_CHARS.search(path)
    if glob:
        folder = path[: path.rfind("/", 0, glob.start()) + 1] or "/"
        pattern = _glob_regex(path)
        paths = [p for p in _list_files(filesystem, folder) if pattern.match(p)]
        if not paths:
            raise InputError(f"{spec}: no file matches.")
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{spec}: no such file or folder.")
        if info.type == pafs.FileType.Directory:
            paths = _list_files(filesystem, path)
            if input_format is None:
                paths = [p for p in paths if format_of(p) is not None]
            if not paths:
                raise InputError(f"{spec}: the folder holds no .parquet, .csv or .jsonl files.")
        else:
            paths = [path]
    paths.sort()
    if input_format is None:
        formats = {p: format_of(p) for p in paths}
        unknown = [p for p, f in formats.items() if f is None]
        if unknown:
            raise InputError(f"{unknown[0]}: cannot tell its format from the name; pass --input-format "
                             f"({', '.join(INPUT_FORMATS)}).")
        if len(set(formats.values())) > 1:
            raise InputError(f"{spec}: holds several formats ({', '.join(sorted(set(formats.values())))}); "
                             f"give one format per input, e.g. with a glob.")
        input_format = next(iter(formats.values()))
    return InputFiles(spec=str(spec), filesystem=filesystem, paths=paths, format=input_format)
