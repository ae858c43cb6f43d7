"""The output folder: a Parquet dataset of ids and embeddings, and the files that describe it.

    OUTPUT/part-000000.parquet ...   embeddings (the local engine's shards; Ray names its own files)
    OUTPUT/_run.json                 what this folder holds: artifact sha256, head, normalize, columns,
                                     engine, input files; written first, checked by every later run
    OUTPUT/_rejects.parquet          bad rows (id, reason), with --on-bad-row skip
    OUTPUT/_summary.json             written last: the run is finished
    OUTPUT/_rejects/, _checkpoint/   work in progress (reject parts; Ray Data's checkpoint), removed
                                     once the summary is written

Readers that skip names starting with '_' or '.' (pyarrow, Spark, DuckDB, pandas through
pyarrow) see only the embeddings. Every file is written whole under a hidden name and renamed,
so a crash never leaves a half-written file under a real name.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobbert_onnx.runtime import JobbertOnnxError
from jobbert_onnx.runtime.files import atomic_file

from . import filesystems
from .table import EMBEDDING_COLUMN, META_STATS, REASON_COLUMN, BatchStats

RUN_FILE = "_run.json"
SUMMARY_FILE = "_summary.json"
REJECTS_FILE = "_rejects.parquet"
REJECT_PARTS = "_rejects"
CHECKPOINT_DIR = "_checkpoint"
RUN_FORMAT = 1
_SHARD = re.compile(r"part-(\d{6})\.parquet\Z")
# What must match for a run to add to an existing folder, and what to tell the user if not.
_SAME_EMBEDDINGS = ("artifact_sha256", "head", "normalize", "prompt_name", "dimension")
_SAME_RUN = ("engine", "text_column", "id_column", "rows_per_shard", "input_format")


def parquet_options(columns: list[str]) -> dict[str, Any]:
    """`pyarrow.parquet.write_table` settings: float embeddings neither compress nor dictionary-encode,
    and their min/max statistics serve no query, so they skip all three (a fifth less CPU for
    writing 20,000 x 1024 floats, same size); other columns keep pyarrow's defaults."""
    rest = [c for c in columns if c != EMBEDDING_COLUMN]
    return {"use_dictionary": rest, "write_statistics": rest,
            "compression": {c: ("none" if c == EMBEDDING_COLUMN else "snappy") for c in columns}}


class OutputFolderError(JobbertOnnxError):
    """An output folder this run must not write into; the message says why and what to do."""


def shard_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


class OutputFolder:
    """One output folder, local or at a URL."""

    def __init__(self, uri: str) -> None:
        self.uri = str(uri)
        self.filesystem, self.path = filesystems.resolve(uri)

    @property
    def location(self) -> str:
        """Where this folder is, for another process: the absolute path, or the URL."""
        return self.path if filesystems.is_local(self.filesystem) else self.uri

    def file(self, name: str) -> str:
        return filesystems.join(self.path, name)

    # -- opening ---------------------------------------------------------------------------
    def open(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """Start or continue the run described by `run`; return the summary if it is already finished.

        A new or empty folder gets `_run.json`. A folder from another artifact, head, normalize
        flag, prompt, engine, columns or input is refused, never mixed.
        """
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            raise OutputFolderError(f"{self.uri} is a file; the output is a folder.")
        if info.type == pafs.FileType.NotFound:
            self.filesystem.create_dir(self.path, recursive=True)
        previous = self.read_json(RUN_FILE)
        if previous is None:
            if self._entries():
                raise OutputFolderError(f"{self.uri} is not empty and has no {RUN_FILE}: it is not an embed-dataset "
                                        f"output. Choose a new folder.")
            self.write_json(RUN_FILE, {"format": RUN_FORMAT, **run})
            return None
        self._check_same(previous, run)
        self._remove_partial_files()
        return self.read_json(SUMMARY_FILE)

    def _check_same(self, previous: dict[str, Any], run: dict[str, Any]) -> None:
        for key in _SAME_EMBEDDINGS:
            if previous.get(key) != run.get(key):
                raise OutputFolderError(
                    f"{self.uri} holds embeddings made with {key} {previous.get(key)!r}, this run uses "
                    f"{run.get(key)!r}; refusing to mix them in one dataset. Write to a new folder, or delete it.")
        for key in _SAME_RUN:
            if previous.get(key) != run.get(key):
                hint = {"engine": f"resume with --engine {previous.get(key)}",
                        "rows_per_shard": f"resume with --batch-rows {previous.get(key)}"}.get(key, "resume with the same")
                raise OutputFolderError(f"{self.uri} was started with {key} {previous.get(key)!r}, this run has "
                                        f"{run.get(key)!r}: {hint}, or write to a new folder.")
        old = {f["path"]: f for f in previous.get("input_files", [])}
        new = {f["path"]: f for f in run.get("input_files", [])}
        if old != new:
            changed = sorted(set(old) ^ set(new)) or sorted(p for p in old if old[p] != new[p])
            raise OutputFolderError(
                f"{self.uri}: the input changed since this run started ({changed[0]} was added, removed or "
                f"modified); resuming would mix two inputs. Restore the input, or write to a new folder.")

    def _entries(self) -> list[pafs.FileInfo]:
        return self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=False))

    def _remove_partial_files(self) -> None:
        """Temporary files of an interrupted write (`.NAME.*.partial`): never committed, safe to drop."""
        for folder in (self.path, self.file(REJECT_PARTS)):
            selector = pafs.FileSelector(folder, recursive=False, allow_not_found=True)
            for info in self.filesystem.get_file_info(selector):
                if info.type == pafs.FileType.File and info.base_name.startswith(".") and \
                        info.base_name.endswith(".partial"):
                    self.filesystem.delete_file(info.path)

    # -- reading ---------------------------------------------------------------------------
    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.file(name)
        if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read().decode("utf-8"))

    def committed_shards(self) -> int:
        """How many local-engine shards are committed; they are numbered 0..n-1 with no gap."""
        indices = sorted(int(m.group(1)) for i in self._entries() if (m := _SHARD.match(i.base_name)))
        if indices != list(range(len(indices))):
            missing = sorted(set(range(indices[-1] + 1)) - set(indices))
            raise OutputFolderError(f"{self.uri}: shard {shard_name(missing[0])} is missing between committed "
                                    f"shards; the folder was changed by hand. Write to a new folder.")
        return len(indices)

    def data_files(self) -> list[str]:
        """The embeddings files (every visible .parquet file at the top), sorted."""
        return sorted(i.path for i in self._entries() if i.type == pafs.FileType.File
                      and i.base_name.endswith(".parquet") and not i.base_name.startswith(("_", ".")))

    def footer(self, path: str) -> pq.FileMetaData:
        return pq.read_metadata(self.filesystem.open_input_file(path))

    # -- writing ---------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole file under `name` (relative to the folder), atomically."""
        self._write(name, lambda f: f.write(data))

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        self.write_bytes(name, (json.dumps(value, indent=2) + "\n").encode())

    def write_table(self, name: str, table: pa.Table) -> None:
        self._write(name, lambda f: pq.write_table(table, f, **parquet_options(table.column_names)))

    def _write(self, name: str, write) -> None:
        path = self.file(name)
        folder = path.rsplit("/", 1)[0]
        if filesystems.is_local(self.filesystem):  # fsync'ed and renamed: atomic even across a power cut
            self.filesystem.create_dir(folder, recursive=True)
            with atomic_file(path, "wb") as f:
                write(f)
            return
        # Elsewhere: write under a hidden name, then move. Object stores make the new object
        # visible only once it is complete, so readers never see part of one.
        temp = filesystems.join(folder, f".{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.partial")
        try:
            with self.filesystem.open_output_stream(temp) as f:
                write(f)
            self.filesystem.move(temp, path)
        except BaseException:
            try:
                self.filesystem.delete_file(temp)
            except OSError:
                pass
            raise

    def write_shard(self, index: int, table: pa.Table, rejects: pa.Table, stats: BatchStats) -> None:
        """Commit one local-engine shard: its rejects first, then its embeddings (the commit)."""
        if rejects.num_rows:
            self.write_table(f"{REJECT_PARTS}/{shard_name(index)}", rejects)
        metadata = {**(table.schema.metadata or {}), META_STATS: stats.to_json().encode()}
        self.write_table(shard_name(index), table.replace_schema_metadata(metadata))

    # -- finishing -------------------------------------------------------------------------
    def finish(self, id_column: str, engine: str, run_seconds: float, rows_this_run: int) -> dict[str, Any]:
        """Gather the rejects into `_rejects.parquet` (one row per id), then write `_summary.json` last.

        `run_seconds` and `rows_this_run` describe this run alone: a resumed run did only part of
        the work. The other counts cover the whole folder.
        """
        rejects = self._merge_rejects(id_column)
        files = self.data_files()
        footers = [self.footer(p) for p in files]
        written = sum(f.num_rows for f in footers)
        stats = [f.metadata[META_STATS] for f in footers if f.metadata and META_STATS in f.metadata]
        summed = BatchStats()
        for value in stats:
            summed += BatchStats(**json.loads(value))
        counted = bool(files) and len(stats) == len(files)  # the local engine counts; Ray's files carry no counts
        summary = {
            "rows_read": written + rejects,
            "rows_written": written,
            "rejected_rows": rejects,
            "unique_texts": summed.unique_texts if counted or not files else None,
            "texts_encoded": summed.encoded if counted or not files else None,
            "files": len(files),
            "engine": engine,
            "seconds": round(run_seconds, 3),
            "rows_this_run": rows_this_run,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **{k: v for k, v in (self.read_json(RUN_FILE) or {}).items() if k in _SAME_EMBEDDINGS},
        }
        self.write_json(SUMMARY_FILE, summary)
        for folder in (REJECT_PARTS, CHECKPOINT_DIR):  # work in progress, now in _rejects.parquet and the data
            if self.filesystem.get_file_info(self.file(folder)).type == pafs.FileType.Directory:
                self.filesystem.delete_dir(self.file(folder))
        return summary

    def _merge_rejects(self, id_column: str) -> int:
        """Join the reject parts into one file, keeping each id once (a Ray batch retried after a
        crash writes its rejects again), and return how many rejected rows there are."""
        parts_folder = self.file(REJECT_PARTS)
        selector = pafs.FileSelector(parts_folder, recursive=False, allow_not_found=True)
        parts = sorted(i.path for i in self.filesystem.get_file_info(selector)
                       if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))
        if not parts:
            return 0
        tables = [pq.read_table(self.filesystem.open_input_file(p)) for p in parts]
        merged = pa.concat_tables(tables, promote_options="default")
        seen: set = set()
        keep = [i for i, key in enumerate(merged[id_column].to_pylist()) if not (key in seen or seen.add(key))]
        merged = merged.take(keep).select([id_column, REASON_COLUMN])
        self.write_table(REJECTS_FILE, merged)
        return merged.num_rows
