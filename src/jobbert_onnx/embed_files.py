"""Files of texts in, embeddings out: the one home of what an input file of texts is.

Both commands that read texts from files read them by the rules here, and fail with one error type,
`InputError`:

- the format comes from the name (`format_of`): .jsonl, .ndjson and .json are JSON lines, .csv is
  CSV, .parquet is Parquet, optionally compressed (.gz, .bz2, .zst, .lz4);
- a JSON line is one JSON object (`json_object`); a line that is not is named with its file, line
  and reason.

`embed --input FILE` reads a whole file here (`read_texts`), with the standard library only, so
the core CLI needs no pyarrow; `embed-dataset` streams large inputs with pyarrow (`datasets.inputs`),
with these formats, this JSON-line rule and this error.

`read_texts` reads line by line, never the file as one string, with the `csv` and `json` modules
doing the parsing. Only '\\n' ends a line: U+2028, NEL, '\\v' and the other separators that
`str.splitlines()` knows stay inside their text. A UTF-8 byte order mark is dropped.

- .txt (and any name that says no other format): one text per line, so rows line up with `wc -l`.
  One trailing '\\r' is stripped; a blank line is the empty text; a last line without '\\n' counts too.
- JSON lines: one JSON object per line with a string field `column` (default `text`); blank lines
  are skipped. Our own JSONL output reads back, whatever its texts hold.
- .csv: a header row, then records; quoted fields may hold line breaks; blank lines are skipped.
- Parquet and compressed files are `embed-dataset`'s: `read_texts` refuses them, saying so.

A line is read `MAX_LINE_CHARS` characters at most: a longer one (or a file with no line breaks,
such as /dev/zero) is an error naming the file and line, not a MemoryError.

Output files go through `runtime.files.atomic_file`: written beside the target and renamed when
complete, with the mode a plain write gives (0666 less the umask).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Sequence, TextIO

from jobbert_onnx.runtime.errors import JobbertOnnxError
from jobbert_onnx.runtime.files import atomic_file

if TYPE_CHECKING:
    import numpy as np

DEFAULT_COLUMN = "text"
# The longest line read (of a .txt, .jsonl or .csv input): far longer than any text worth embedding
# (the runtime cuts texts to the model's tokens), short enough that reading one is never a MemoryError.
MAX_LINE_CHARS = 1 << 24
OUTPUT_SUFFIXES = (".npy", ".jsonl")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


# The input formats by file suffix; pyarrow reads them compressed with these (`embed-dataset` only).
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json", ".ndjson": "json",
            ".json": "json"}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")


class InputError(JobbertOnnxError):
    """An input (a file of `embed --input`, a file, folder or glob of `embed-dataset`) that cannot be
    read as texts; the message names it, and the line where there is one, and says why."""


InputFileError = InputError  # the name `embed`'s reader gave it before there was one type


class OutputFileError(JobbertOnnxError):
    """An output file that cannot be written where the user asked; the message names it and says why."""


# -- reading -------------------------------------------------------------------------------
def format_of(path: str | os.PathLike) -> str | None:
    """The format a file name says ('data.csv.gz' -> 'csv', 'a.ndjson' -> 'json'), or None."""
    name = os.fspath(path).rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    dot = name.rfind(".")
    return SUFFIXES.get(name[dot:]) if dot >= 0 else None


def json_object(line: str | bytes, where: str) -> dict:
    """The JSON object on one line, or InputError naming `where` (file:line) and the reason."""
    try:
        record = json.loads(line)
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # UnicodeDecodeError, for bytes
        raise InputError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: {_json_type(record)}, not a JSON object")
    return record


def read_texts(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """The texts of a .txt, JSON-lines or .csv file (a name of no other format reads as .txt), in file order.

    `column` names the JSONL/CSV field (default `text`); it is refused for .txt files.
    """
    path = Path(path)
    kind = format_of(path.name)
    if kind == "parquet" or path.name.lower().endswith(COMPRESSION_SUFFIXES):
        raise InputError(f"{path}: embed reads plain text, JSON-lines and CSV files; embed-dataset reads Parquet "
                         f"and compressed files.")
    if column is not None and kind is None:
        raise InputError(f"{path}: --column applies to JSON-lines (.jsonl, .ndjson, .json) and .csv inputs only.")
    field = column or DEFAULT_COLUMN
    try:
        if kind == "json":
            return list(_jsonl_texts(path, field))
        if kind == "csv":
            return list(_csv_texts(path, field))
        return list(_txt_texts(path))
    except UnicodeDecodeError:
        raise InputError(_not_utf8(path)) from None
    except MemoryError:  # many lines, each under the limit, that do not fit in memory together
        raise InputError(f"{path}: too large to hold its texts in memory; split it, or use embed-dataset, "
                         f"which streams.") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc}).") from None


def _lines(handle: TextIO, path: Path) -> Iterator[str]:
    """The lines of `handle`, each read `MAX_LINE_CHARS` characters at most; a longer one is an
    InputError naming the file and line."""
    limit = MAX_LINE_CHARS
    for number in itertools.count(1):
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(("\n", "\r")):
            raise InputError(f"{path}:{number}: a line longer than {limit:,} characters; is it a text file? "
                                 f"Split such texts into lines of at most {limit:,} characters.")
        yield line


def _txt_texts(path: Path) -> Iterator[str]:
    # newline="\n": lines end at '\n' only and keep any '\r' (universal newlines would split at '\r').
    with open(path, encoding="utf-8-sig", newline="\n") as handle:
        for line in _lines(handle, path):
            yield line.removesuffix("\n").removesuffix("\r")


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8-sig", newline="\n") as handle:
        for number, line in enumerate(_lines(handle, path), 1):
            if not line.strip(" \t\r\n"):  # JSON's whitespace only: U+2028 alone is an error, not blank
                continue
            where = f"{path}:{number}"
            record = json_object(line, where)
            if field not in record:
                raise InputError(f"{where}: no {field!r} field (fields: {', '.join(map(repr, record))}); "
                                     f"choose one with --column.")
            value = record[field]
            if not isinstance(value, str):
                raise InputError(f"{where}: field {field!r} is {_json_type(value)}, not a string.")
            yield value


def _csv_texts(path: Path, field: str) -> Iterator[str]:
    # newline="" hands line ends to the csv module, which keeps them inside quoted fields.
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.DictReader(_lines(handle, path))
        try:
            if rows.fieldnames is None:
                raise InputError(f"{path}: empty; a CSV input starts with a header row naming its columns.")
            if field not in rows.fieldnames:
                raise InputError(f"{path}: no column {field!r} (columns: {', '.join(map(repr, rows.fieldnames))}); "
                                     f"choose one with --column.")
            for number, row in enumerate(rows, 1):
                value = row[field]
                if value is None:  # DictReader's filler for a row shorter than the header
                    raise InputError(f"{path}:{rows.line_num}: record {number} has no {field!r} value "
                                         f"(fewer fields than the header).")
                yield value
        except csv.Error as exc:
            raise InputError(f"{path}:{rows.line_num}: not valid CSV ({exc}).") from None


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _not_utf8(path: Path) -> str:
    """The error for a file that is not UTF-8, naming the first bad line (decoding runs in chunks)."""
    with open(path, "rb") as handle:
        # binary lines end at b"\n", as our text lines do; bounded, as they are
        for number, line in enumerate(iter(lambda: handle.readline(4 * MAX_LINE_CHARS), b""), 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{path}:{number}: not UTF-8 (byte {line[exc.start]:#04x} at byte {exc.start + 1} of the line); "
                        f"save the file as UTF-8.")
    return f"{path}: not UTF-8; save the file as UTF-8."


# -- writing -------------------------------------------------------------------------------
def refuse_input_as_output(output: Path, input: Path) -> None:
    """OutputFileError when `output` is the file `input` under any name (a relative spelling, a
    symbolic or hard link): writing it would replace the texts with their embeddings."""
    same = output.resolve() == input.resolve()
    try:
        a, b = os.stat(output), os.stat(input)
        same = same or (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except OSError:  # no output yet (or no input: reading it says so)
        pass
    if same:
        raise OutputFileError(f"{output}: is the input file {input}; writing the embeddings there would replace "
                              f"the texts. Choose another --output.")


def check_output_name(path: Path) -> str:
    """The output format of `path` ('.npy' or '.jsonl'), or OutputFileError."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise OutputFileError(f"{path}: unknown output format; use a .npy or .jsonl file name.")
    return suffix


Write = Callable[[Sequence[str], "np.ndarray"], None]


@contextmanager
def embeddings_writer(path: Path | None) -> Iterator[Write]:
    """Yield `write(texts, embeddings)`, saving to .npy or .jsonl, or printing JSON lines when `path` is None.

    The output's staging file is created on entry, beside `path` (missing folders are made): a
    name that cannot be written fails before the caller encodes anything. `path` is replaced,
    whole, when the block ends well; on an error or Ctrl-C it is left as it was.
    """
    if path is None:
        yield lambda texts, embeddings: sys.stdout.writelines(_jsonl_lines(texts, embeddings))
        return
    suffix = check_output_name(path)
    with ExitStack() as stack:
        handle = _open_output(stack, path)
        if suffix == ".npy":
            import numpy as np

            yield lambda texts, embeddings: np.save(handle, embeddings)
        else:
            yield lambda texts, embeddings: handle.writelines(
                line.encode("utf-8") for line in _jsonl_lines(texts, embeddings))


def _open_output(stack: ExitStack, path: Path) -> BinaryIO:
    """`atomic_file(path, "wb")` entered on `stack`, or an OutputFileError naming `path` and the reason."""
    for ancestor in path.parents:  # mkdir would only say 'File exists' for a file in the way
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputFileError(f"{path}: {ancestor} is a file, not a folder.")
            break
    if path.is_dir():
        raise OutputFileError(f"{path}: is a directory; name a file inside it instead.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return stack.enter_context(atomic_file(path, "wb"))
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write there ({exc.strerror or exc}).") from None


def write_embeddings(path: Path | None, texts: Sequence[str], embeddings: np.ndarray) -> None:
    """Save `embeddings` (one row per text) to .npy or .jsonl, or print JSON lines when `path` is None."""
    with embeddings_writer(path) as write:
        write(texts, embeddings)


def _jsonl_lines(texts: Sequence[str], embeddings: np.ndarray) -> Iterator[str]:
    """One `{"text": ..., "embedding": [...]}` line per text, made as it is written (never one big string)."""
    if len(texts) != len(embeddings):
        raise ValueError(f"{len(texts)} texts but {len(embeddings)} embeddings.")
    for text, row in zip(texts, embeddings):
        record = {"text": text, "embedding": row.tolist()}
        # ensure_ascii=False leaves U+2028 and NEL raw, which is fine: JSONL lines end at '\n' only.
        line = json.dumps(record, ensure_ascii=False)
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate (e.g. from undecodable argv bytes): escape it
                line = json.dumps(record)
        yield line + "\n"
