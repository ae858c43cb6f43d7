"""The output folder: a Parquet dataset of ids and embeddings, and the files that describe it.

    OUTPUT/part-000000.parquet ...   embeddings (the local engine's shards; Ray names its own files)
    OUTPUT/_run.json                 what this folder holds: artifact sha256, head, normalize, columns,
                                     engine, input files; written first, checked by every later run
    OUTPUT/_rejects.parquet          bad rows (id, reason), with --on-bad-row skip
    OUTPUT/_summary.json             written last: the run is finished
    OUTPUT/_rejects/, _checkpoint/   work in progress (reject parts; Ray Data's checkpoint), removed
                                     once the summary is written
    OUTPUT/_lock                     held (flock) by the run writing the folder, naming its pid and
                                     host; removed once the summary is written

Readers that skip names starting with '_' or '.' (pyarrow, Spark, DuckDB, pandas through
pyarrow) see only the embeddings. Every file is written whole under a hidden name and renamed,
so a crash never leaves a half-written file under a real name.

Removing never follows a link: a link planted at one of these names is removed itself (never its
target), and only files of the names written here are deleted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobbert_onnx.runtime import JobbertOnnxError
from jobbert_onnx.runtime.files import atomic_file

from . import filesystems
from .defaults import SAME_EMBEDDINGS, SAME_RUN, record_flag, resume_keys
from .table import EMBEDDING_COLUMN, META_STATS, REASON_COLUMN, BatchStats

RUN_FILE = "_run.json"
SUMMARY_FILE = "_summary.json"
REJECTS_FILE = "_rejects.parquet"
REJECT_PARTS = "_rejects"
CHECKPOINT_DIR = "_checkpoint"
LOCK_FILE = "_lock"
RUN_FORMAT = 1
_SHARD = re.compile(r"part-(\d{6})\.parquet\Z")
# The files this package writes into OUTPUT/_rejects/: local shards' parts, Ray batches' parts, and
# the temporary files of an interrupted write. Nothing else there is deleted.
_REJECT_PART = re.compile(r"(part-\d{6}|ray-[0-9a-f]{32})\.parquet\Z|\..+\.partial\Z")
# What must match for a run to add to an existing folder (the settings' own declarations, in
# `datasets.defaults`, and what the artifact decides), and what to tell the user if not.
_SAME_EMBEDDINGS = ("artifact_sha256", *resume_keys(SAME_EMBEDDINGS), "dimension")
_SAME_RUN = resume_keys(SAME_RUN)


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
        self._lock_fd: int | None = None

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
        flag, prompt, engine, columns or input is refused, never mixed. A run that goes on holds
        the folder's lock until `close()`; another run into it is refused, naming the first.
        """
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            raise OutputFolderError(f"{self.uri} is a file; the output is a folder.")
        if info.type == pafs.FileType.NotFound:
            self.filesystem.create_dir(self.path, recursive=True)
        previous = self.read_json(RUN_FILE)
        if previous is None and [i for i in self._entries() if i.base_name != LOCK_FILE]:
            raise OutputFolderError(f"{self.uri} is not empty and has no {RUN_FILE}: it is not an embed-dataset "
                                    f"output. Choose a new folder.")
        if previous is not None:
            self._check_same(previous, run)
            finished = self.read_json(SUMMARY_FILE)
            if finished is not None:  # nothing to write: no lock, no change
                return finished
        self._lock()
        try:
            previous = self.read_json(RUN_FILE)  # as it is now that no other run writes here
            if previous is None:
                self._claim()
                self.write_json(RUN_FILE, {"format": RUN_FORMAT, **run})
                return None
            self._check_same(previous, run)
            finished = self.read_json(SUMMARY_FILE)
            if finished is not None:
                self.close()
                return finished
            self._claim()
            self._remove_planted_links()
            self._remove_partial_files()
        except BaseException:
            self.close()
            raise
        return None

    def close(self) -> None:
        """Release the folder's lock (a process that dies releases it too)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock(self) -> None:
        """Take OUTPUT/_lock with flock, or refuse: another run is writing this folder.

        flock dies with its process, so a run killed with -9 leaves no stale lock. Local disks
        only: object stores have no such lock (one run per folder there is the user's part).
        """
        if not filesystems.is_local(self.filesystem):
            return
        try:
            import fcntl
        except ImportError:  # Windows
            return
        path = self.file(LOCK_FILE)
        try:  # O_NOFOLLOW: a link planted as _lock must not make us create or write a file elsewhere
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise OutputFolderError(f"{path}: cannot open the output folder's lock file ({exc.strerror or exc}); "
                                    f"a link there is refused.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "its pid unknown"
            os.close(fd)
            raise OutputFolderError(f"{self.uri} is being written by another embed-dataset run ({holder}); wait "
                                    f"for it to finish, or stop it, then run again.") from None
        self._lock_fd = fd

    def _claim(self) -> None:
        """Write who holds the lock into it, for the message of a run that is refused."""
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def _remove_planted_links(self) -> None:
        """The work folders are made by this package, never as links: a link there (planted, or
        left by a tool) would send our writes and deletes elsewhere, so remove the link itself."""
        if filesystems.is_local(self.filesystem):
            for name in (REJECT_PARTS, CHECKPOINT_DIR):
                if os.path.islink(self.file(name)):
                    os.unlink(self.file(name))

    def _check_same(self, previous: dict[str, Any], run: dict[str, Any]) -> None:
        for key in _SAME_EMBEDDINGS:
            if previous.get(key) != run.get(key):
                raise OutputFolderError(
                    f"{self.uri} holds embeddings made with {key} {previous.get(key)!r}, this run uses "
                    f"{run.get(key)!r}; refusing to mix them in one dataset. Write to a new folder, or delete it.")
        for key in _SAME_RUN:
            if previous.get(key) != run.get(key):
                was = previous.get(key)
                hint = (f"resume without {record_flag(key)}" if was is None else
                        f"resume with {record_flag(key)} {shlex.quote(str(was))}")
                raise OutputFolderError(f"{self.uri} was started with {key} {was!r}, this run has "
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
            for path in self._own_files(folder):
                name = path.rsplit("/", 1)[-1]
                if name.startswith(".") and name.endswith(".partial"):
                    self.filesystem.delete_file(path)

    def _own_files(self, folder: str) -> list[str]:
        """The plain files directly in `folder`; on a local disk, neither `folder` nor a file may be a link."""
        if filesystems.is_local(self.filesystem):
            if os.path.islink(folder) or not os.path.isdir(folder):
                return []
            with os.scandir(folder) as entries:
                return [filesystems.join(folder, e.name) for e in entries if e.is_file(follow_symlinks=False)]
        selector = pafs.FileSelector(folder, recursive=False, allow_not_found=True)
        return [i.path for i in self.filesystem.get_file_info(selector) if i.type == pafs.FileType.File]

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
        """Gather the rejects into `_rejects.parquet`, then write `_summary.json` last.

        `run_seconds` and `rows_this_run` describe this run alone: a resumed run did only part of
        the work. The other counts cover the whole folder, and rows read = rows written + rows
        rejected. The local engine's shards record their counts: rejects missing from
        `_rejects/` fail the run rather than give a summary that lies.
        """
        rejects = self._merge_rejects(id_column, dedup=engine == "ray")
        files = self.data_files()
        footers = [self.footer(p) for p in files]
        written = sum(f.num_rows for f in footers)
        stats = [f.metadata[META_STATS] for f in footers if f.metadata and META_STATS in f.metadata]
        summed = BatchStats()
        for value in stats:
            summed += BatchStats(**json.loads(value))
        counted = bool(files) and len(stats) == len(files)  # the local engine counts; Ray's files carry no counts
        if counted and summed.rejected != rejects:
            where = self.file(REJECT_PARTS)
            raise OutputFolderError(
                f"{self.uri}: {summed.rejected - rejects} rejected rows of the committed shards are missing from "
                f"{where}/ (the folder was changed by hand); write to a new folder." if summed.rejected > rejects else
                f"{self.uri}: {where}/ holds {rejects - summed.rejected} rejected rows more than the committed shards "
                f"(the folder was changed by hand); write to a new folder.")
        summary = {
            "rows_read": written + rejects,
            "rows_written": written,
            "rejected_rows": rejects,
            "unique_texts": summed.unique_texts if counted or not files else None,
            "texts_encoded": summed.encoded if counted or not files else None,
            "cache_hits": summed.cache_hits if counted or not files else None,
            "cache_misses": summed.cache_misses if counted or not files else None,
            "files": len(files),
            "engine": engine,
            "seconds": round(run_seconds, 3),
            "rows_this_run": rows_this_run,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **{k: v for k, v in (self.read_json(RUN_FILE) or {}).items() if k in _SAME_EMBEDDINGS},
        }
        self.write_json(SUMMARY_FILE, summary)
        self._remove_work_folder(REJECT_PARTS)  # now in _rejects.parquet
        self._remove_work_folder(CHECKPOINT_DIR)  # Ray Data's, now in the data
        if self._lock_fd is not None:
            # Safe while we hold it: a run that opened this file before sees the summary once it
            # gets the lock, and writes nothing. unlink removes a link there, never its target.
            os.unlink(self.file(LOCK_FILE))
        return summary

    def _remove_work_folder(self, name: str) -> None:
        """Remove OUTPUT/NAME without following links: a link is unlinked itself; in _rejects/ only
        our own parts go, and the folder with them if nothing else is left."""
        path = self.file(name)
        if not filesystems.is_local(self.filesystem):  # object stores have no links
            if self.filesystem.get_file_info(path).type == pafs.FileType.Directory:
                self.filesystem.delete_dir(path)
            return
        if os.path.islink(path):
            os.unlink(path)
        elif not os.path.isdir(path):
            return
        elif name == CHECKPOINT_DIR:
            shutil.rmtree(path)  # Ray Data's own folder; rmtree removes links inside as links
        else:
            for file in self._own_files(path):
                if _REJECT_PART.match(file.rsplit("/", 1)[-1]):
                    os.unlink(file)
            try:
                os.rmdir(path)
            except OSError:  # something we did not write is left there: leave it, and the folder
                pass

    def reject_parts(self) -> list[str]:
        """The reject parts in OUTPUT/_rejects/, sorted (for the local engine: in input order)."""
        return sorted(p for p in self._own_files(self.file(REJECT_PARTS)) if _REJECT_PART.match(p.rsplit("/", 1)[-1])
                      and p.endswith(".parquet"))

    def count_rejects(self, id_column: str) -> int:
        """Distinct ids in the reject parts (the Ray engine's count before and after a run)."""
        ids = [pq.read_table(self.filesystem.open_input_file(p), columns=[id_column])[id_column]
               for p in self.reject_parts()]
        return len(pa.chunked_array(ids).unique()) if ids else 0

    def _merge_rejects(self, id_column: str, dedup: bool) -> int:
        """Join the reject parts into one file and return how many rejected rows there are.

        The local engine writes each shard's part once (a redone shard rewrites it), so every row
        stays, null and repeated ids included. Ray (`dedup`) may write a batch's rejects again under
        another name when it reruns the batch; its ids are unique and non-null (checked before it
        starts), so each id is kept once.
        """
        parts = self.reject_parts()
        if not parts:  # merged by a run that stopped before writing the summary, or none
            if self.filesystem.get_file_info(self.file(REJECTS_FILE)).type == pafs.FileType.File:
                return self.footer(self.file(REJECTS_FILE)).num_rows
            return 0
        tables = [pq.read_table(self.filesystem.open_input_file(p)) for p in parts]
        merged = pa.concat_tables(tables, promote_options="default")
        if dedup:
            seen: set = set()
            keep = [i for i, key in enumerate(merged[id_column].to_pylist()) if not (key in seen or seen.add(key))]
            merged = merged.take(keep)
        merged = merged.select([id_column, REASON_COLUMN])
        self.write_table(REJECTS_FILE, merged)
        return merged.num_rows
