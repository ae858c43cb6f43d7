"""Input datasets: Parquet, CSV and JSON-lines files, folders of them and globs, local or URLs.

What a file of texts is (its format by name, the JSON-line rule) and the error (`InputError`) are
those of `embed --input`, in `jobbert_onnx.embed_files`; this module streams them with pyarrow.

`resolve_input` turns what the user typed into a sorted list of files of one format; the
local engine then streams them in record batches (`InputFiles.pieces`), file after file, so
rows are numbered in that order and never all held at once. The Ray engine hands the same
file list to `ray.data.read_*`.
"""

from __future__ import annotations

import itertools
import os
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

from jobbert_onnx.embed_files import InputError, format_of, json_object

from . import filesystems
from .defaults import INPUT_FORMATS
from .table import KNOWN_BAD_COLUMN

_GLOB_CHARS = re.compile(r"[*?\[]")
# CSV and JSON are read in blocks of this size by default (`--max-row-mb`: a row must fit in one),
# a fixed number of them ahead of the consumer: about 40 MB at most, whatever the file's size.
TEXT_BLOCK_BYTES = 1 << 20
BATCH_ROWS = 65_536  # rows per Parquet record batch
_BOM = b"\xef\xbb\xbf"


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
    block_bytes: int | None = None  # CSV and JSON read block, the longest row (None: TEXT_BLOCK_BYTES)

    @property
    def block(self) -> int:
        return self.block_bytes or TEXT_BLOCK_BYTES

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

    def columns(self, path: str, text_column: str | None) -> list[str]:
        """The column names of one file (its footer, header or first JSON block)."""
        with self._reader(path, text_column, None) as (names, _):
            return names

    @contextmanager
    def _reader(self, path: str, text_column: str | None, id_column: str | None
                ) -> Iterator[tuple[list[str], Callable[[list[str]], Iterator[pa.Table]]]]:
        """(the file's column names, `tables(columns)`: its rows, read as they are consumed).

        pyarrow's readers keep memory bounded: Parquet without pre-buffering (which reads all the
        row groups' column chunks at once), CSV in blocks of `self.block` bytes, a fixed number of
        them read ahead; JSON lines are cut into blocks of whole lines here (`_json_tables`).
        """
        try:
            if self.format == "parquet":
                with self.filesystem.open_input_file(path) as handle:
                    file = pq.ParquetFile(handle, pre_buffer=False)
                    yield file.schema_arrow.names, lambda columns: (
                        pa.Table.from_batches([b]) for b in file.iter_batches(BATCH_ROWS, columns=columns))
                return
            with self.filesystem.open_input_stream(path, compression="detect") as stream:
                if self.format == "csv":  # a CSV field of the text column stays a string: no type guessing
                    types = {text_column: pa.string()} if text_column else {}
                    reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=self.block),
                                            convert_options=pacsv.ConvertOptions(column_types=types))
                    yield reader.schema.names, lambda columns: (
                        pa.Table.from_batches([b]).select(columns) for b in reader)
                    return
                wanted = [c for c in (id_column, text_column) if c is not None]
                tables = _json_tables(stream, path, self.block, wanted)
                first = next(tables, None)
                names = [] if first is None else [c for c in first.column_names if c != KNOWN_BAD_COLUMN]
                yield names, lambda columns: (
                    t.select([c for c in [*columns, KNOWN_BAD_COLUMN] if c in t.column_names])
                    for t in itertools.chain([] if first is None else [first], tables))
        except (pa.ArrowInvalid, OSError) as exc:  # e.g. a JSON field holding strings and numbers
            if "straddl" in str(exc) or "block size" in str(exc):
                raise InputError(f"{path}: a row is longer than the read block of {_mb(self.block)} MB; raise "
                                 f"--max-row-mb (max_row_mb) above {_mb(self.block)}.") from None
            raise InputError(f"{path}: cannot read it as {self.format}: {exc}") from None

    def pieces(self, text_column: str | None, id_column: str | None) -> Iterator[Piece]:
        """Stream the id and text columns of every file in record batches, file after file.

        A file without the id column raises `InputError`; a file without the text column yields
        its rows without it (each is then a bad row). Ids are cast to the first file's id type.
        A JSON line that is not a JSON object comes as a row with null columns and its reason in
        `KNOWN_BAD_COLUMN`. `text_column=None` reads the ids alone.
        """
        id_type: pa.DataType | None = None
        for path in self.paths:
            with self._reader(path, text_column, id_column) as (names, tables):
                if id_column is not None and id_column not in names:
                    raise InputError(f"{path}: no id column {id_column!r} (columns: {', '.join(names)}).")
                for table in tables([c for c in (id_column, text_column) if c is not None and c in names]):
                    if id_column is not None:
                        if id_type is None and not pa.types.is_null(table.schema.field(id_column).type):
                            id_type = table.schema.field(id_column).type
                        if id_type is not None:
                            table = _cast_ids(table, id_column, id_type, path)
                    yield Piece(path, table)


def _json_tables(stream, path: str, block: int, wanted: list[str]) -> Iterator[pa.Table]:
    """The rows of a JSON-lines stream, in tables of about `block` bytes of whole lines.

    Each block goes to pyarrow's JSON parser whole. When pyarrow refuses one, its lines are parsed
    one by one: a line that is not valid JSON or not an object becomes a row of nulls whose reason,
    naming the file and line, is in `KNOWN_BAD_COLUMN` (a bad row, rejected or reported by
    `TableEmbedder`); the others are parsed again. A line longer than `block` bytes is an
    `InputError` naming the line and `--max-row-mb`.
    """
    schema: dict[str, pa.DataType] = {}  # the wanted columns' types, from the first block that has them
    pending, line, start = b"", 1, True
    while True:
        data = stream.read(block)
        if start:
            data, start = data.removeprefix(_BOM), False
        pending += data
        cut = pending.rfind(b"\n") + 1 if data else len(pending)  # whole lines; at the end, the rest
        if data and cut == 0:
            if len(pending) > block:
                raise _long_line(path, line, block)
            continue
        lines, pending = pending[:cut], pending[cut:]
        if len(lines) > block and max(map(len, lines.split(b"\n"))) > block:
            long = next(i for i, text in enumerate(lines.split(b"\n")) if len(text) > block)
            raise _long_line(path, line + long, block)
        if lines.strip():
            table = _parse_json_block(lines, path, line, wanted, schema)
            for name in wanted:
                if name in table.column_names and name not in schema and not pa.types.is_null(table[name].type):
                    schema[name] = table[name].type
            if table.num_rows:
                yield table
        line += lines.count(b"\n")
        if not data:
            return


def _long_line(path: str, line: int, block: int) -> InputError:
    return InputError(f"{path}:{line}: a line longer than the read block of {_mb(block)} MB; raise --max-row-mb "
                      f"(max_row_mb) above {_mb(block)}.")


def _mb(size: int) -> str:
    return f"{round(size / 2**20, 3):g}"


def _read_json(data: bytes, schema: dict[str, pa.DataType]) -> pa.Table:
    options = pajson.ParseOptions(explicit_schema=pa.schema(list(schema.items()))) if schema else None
    return pajson.read_json(pa.BufferReader(data), read_options=pajson.ReadOptions(block_size=len(data) + 1),
                            parse_options=options)


def _parse_json_block(data: bytes, path: str, first_line: int, wanted: list[str],
                      schema: dict[str, pa.DataType]) -> pa.Table:
    try:
        return _read_json(data, schema)
    except pa.ArrowInvalid as exc:
        refused = exc
    reasons: list[str | None] = []  # one per row: each line that is not blank
    good: list[bytes] = []
    for number, text in enumerate(data.split(b"\n"), first_line):
        if not text.strip(b" \t\r"):
            continue
        try:
            json_object(text, f"{path}:{number}")  # the rule `embed` reads JSON lines by
            reason = None
        except InputError as exc:
            reason = str(exc)
        reasons.append(reason)
        if reason is None:
            good.append(text)
    if len(good) == len(reasons):  # no malformed line: what pyarrow refused is something else (mixed types)
        raise refused
    if good:
        parsed = _read_json(b"\n".join(good), schema)
        positions, next_good = [], 0
        for reason in reasons:
            positions.append(None if reason is not None else next_good)
            next_good += reason is None
        table = parsed.take(pa.array(positions, pa.int64()))
    else:
        table = pa.table({name: pa.nulls(len(reasons), schema.get(name, pa.null())) for name in wanted})
    return table.append_column(KNOWN_BAD_COLUMN, pa.array(reasons, pa.string()))


def _cast_ids(table: pa.Table, id_column: str, id_type: pa.DataType, path: str) -> pa.Table:
    column = table[id_column]
    if column.type == id_type:
        return table
    try:
        return table.set_column(table.schema.get_field_index(id_column), id_column, column.cast(id_type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"{path}: ids of type {column.type} do not convert to {id_type}, the id type of the "
                         f"first file; give every file the same id type.") from None


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


def _list_files(filesystem: pafs.FileSystem, folder: str, skip: Callable[[str], bool]) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    base = folder.rstrip("/") + "/"
    return [i.path for i in infos if i.type == pafs.FileType.File and not _hidden(i.path[len(base):])
            and not skip(i.path)]


def within(filesystem: pafs.FileSystem, folder: str) -> Callable[[str], bool]:
    """`inside(path)`: whether `path` (on `filesystem`) is `folder` or lies in it; links are
    resolved on a local disk, so that another spelling of the folder is still the folder."""
    if filesystems.is_local(filesystem):
        root = os.path.realpath(folder)
        return lambda path: _under(os.path.realpath(path), root)
    return lambda path: _under(path, folder)


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder if folder.endswith("/") else folder + "/")


def resolve_input(spec: str, input_format: str | None = None, *, block_bytes: int | None = None,
                  output: tuple[pafs.FileSystem, str] | None = None) -> InputFiles:
    """The files `spec` names: one file, a folder (searched recursively), or a glob, as a local
    path or URL. Their format comes from their suffixes (.parquet, .csv, .jsonl/.json/.ndjson,
    optionally compressed) or `input_format`; one input holds one format.

    `output`, the output folder (file system, path), is left out of a folder or glob: it may lie
    inside the input folder, and its files must not become input on the next run. An output
    folder that holds the input is refused. `block_bytes`: CSV and JSON read block (the longest row).
    """
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise ValueError(f"input format {input_format!r}: must be one of {', '.join(INPUT_FORMATS)}.")
    filesystem, path = filesystems.resolve(spec)
    glob = _GLOB_CHARS.search(path)
    base = (path[: path.rfind("/", 0, glob.start()) + 1] or "/") if glob else path
    in_output: Callable[[str], bool] = lambda p: False  # noqa: E731
    if output is not None and type(output[0]) is type(filesystem) and output[0].type_name == filesystem.type_name:
        in_output = within(*output)
        if in_output(base):
            from .output import OutputFolderError

            raise OutputFolderError(f"the output folder {output[1]} holds the input {spec}; write the output "
                                    f"to a folder outside the input.")
    if glob:
        folder = base
        pattern = _glob_regex(path)
        paths = [p for p in _list_files(filesystem, folder, in_output) if pattern.match(p)]
        if not paths:
            raise InputError(f"{spec}: no file matches.")
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{spec}: no such file or folder.")
        if info.type == pafs.FileType.Directory:
            paths = _list_files(filesystem, path, in_output)
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
    return InputFiles(spec=str(spec), filesystem=filesystem, paths=paths, format=input_format, block_bytes=block_bytes)
