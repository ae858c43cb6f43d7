"""The Ray engine: Ray Data reads, a pool of actors embeds, Ray Data writes and checkpoints.

    ray.data.read_{parquet,csv,json}(files)
      -> repartition(target_num_rows_per_block=batch_rows)        # streaming, no shuffle
      -> map_batches(RayEmbedBatches, compute=ActorPoolStrategy(size=workers),
                     num_cpus=threads, num_gpus=1 on CUDA, batch_size=batch_rows)
      -> write_parquet(OUTPUT)

Each actor holds one `Embedder` with `threads` onnxruntime threads and runs the same
`TableEmbedder` as the local engine. Exactly-once output and resume come from Ray Data's own
checkpointing (`DataContext.checkpoint_config`, keyed by the id column, kept in
`OUTPUT/_checkpoint/`): before a file is written its ids go to a pending checkpoint, which is
renamed once the file is complete; a restarted job deletes the files of pending checkpoints and
skips the ids of committed ones. Ray retries a task whose actor died. Nothing here schedules,
retries or tracks work itself; `tests/test_datasets_ray.py` pins the behaviour this relies on.

That checkpoint needs every id non-null and unique: a repeated id would be written twice, or
skipped on resume as if done. So before Ray starts, the driver reads the id column of every file
(`check_ids`, in file order, as the local engine does) and refuses the input at the first null or
repeated id, or malformed JSON line, with its file and row, whatever `on_bad_row` says: finding
the first row of an id across workers reading in parallel has no cheap answer, and the local
engine rejects those rows and goes on.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from jobbert_onnx.runtime import JobbertOnnxError

from .ids import SeenIds
from .inputs import InputFiles
from .output import CHECKPOINT_DIR, REJECT_PARTS, OutputFolder, parquet_options
from .table import EMBEDDING_COLUMN, KNOWN_BAD_COLUMN, BadRowError, InputError, TableEmbedder

# Logical CPUs a Ray instance started here gets beyond the actors' own: one for the read and
# write tasks, one for Ray Data's checkpoint filter actor. Without them the pipeline waits forever.
EXTRA_CPUS = 2


class RayEmbedBatches:
    """The `map_batches` callable: one `Embedder` per actor, loaded once, applied to each batch.

    Bad rows (with on_bad_row='skip') go to a reject part named by the hash of their ids, so a
    batch that Ray runs again rewrites the same file; `OutputFolder.finish` keeps each id once.
    Subclass it to add behaviour around each batch (the tests make an actor die this way).
    """

    def __init__(self, artifact: str, device: str, threads: int, settings: dict[str, Any], output: str) -> None:
        from jobbert_onnx.runtime import Embedder

        self.table_embedder = TableEmbedder(Embedder(artifact, device=device, threads=threads), **settings)
        self.output = OutputFolder(output)

    def __call__(self, table: pa.Table) -> pa.Table:
        result = self.table_embedder(table)
        if result.rejects.num_rows:
            ids = result.rejects[self.table_embedder.id_name].to_pylist()
            digest = hashlib.sha256(repr(ids).encode()).hexdigest()[:32]
            self.output.write_table(f"{REJECT_PARTS}/ray-{digest}.parquet", result.rejects)
        return result.table


def _read(inputs: InputFiles, text_column: str):
    import ray.data

    common = {"filesystem": inputs.filesystem, "file_extensions": None}
    if inputs.format == "parquet":
        return ray.data.read_parquet(inputs.paths, **common)
    if inputs.format == "csv":
        options = pacsv.ConvertOptions(column_types={text_column: pa.string()})
        return ray.data.read_csv(inputs.paths, convert_options=options,
                                 read_options=pacsv.ReadOptions(block_size=inputs.block), **common)
    # pyarrow's JSON reader, which reads JSON lines
    return ray.data.read_json(inputs.paths, read_options=pajson.ReadOptions(block_size=inputs.block), **common)


def _our_error(exc: BaseException) -> BaseException | None:
    """The BadRowError or InputError that failed a Ray task, rebuilt from the exception Ray raises.

    Ray wraps a task's exception in RayTaskError and UserCodeException, and the original is not
    always among their causes; its type and message are in their text as "module.Class: message".
    """
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e) in (BadRowError, InputError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    found = re.search(r"jobbert_onnx\.(?:datasets\.table|embed_files)\.(BadRowError|InputError): (.+)", str(exc))
    if found is None:
        return None
    return {"BadRowError": BadRowError, "InputError": InputError}[found.group(1)](found.group(2).strip())


def check_columns(inputs: InputFiles, text_column: str, id_column: str) -> None:
    """Every file must have both columns: Ray reads them as one dataset, so a missing column would
    turn into nulls instead of an error naming the file."""
    for path in inputs.paths:
        names = inputs.columns(path, text_column)
        for column in (id_column, text_column):
            if column not in names:
                raise InputError(f"{path}: no column {column!r} (columns: {', '.join(names)}). The Ray engine needs "
                                 f"it in every file; --engine local rejects such rows with --on-bad-row skip.")


def check_ids(inputs: InputFiles, id_column: str) -> None:
    """Refuse the input at its first null or repeated id, or malformed JSON line (BadRowError with
    the file and row): Ray Data's checkpoint, keyed by id, needs unique ids. Reads the id column
    alone, file after file; remembers the ids compactly (`SeenIds`)."""
    seen = SeenIds()
    for path, first, table in _numbered(inputs.pieces(None, id_column)):
        ids = table[id_column]
        bad = ids.is_null().to_numpy(zero_copy_only=False) | seen.repeats(ids)
        known = table[KNOWN_BAD_COLUMN].to_pylist() if KNOWN_BAD_COLUMN in table.column_names else None
        if not bad.any():
            continue
        i = int(np.flatnonzero(bad)[0])
        value = ids[i].as_py()
        reason = (known[i] if known and known[i] else "id is null" if value is None else
                  f"id {value!r} is repeated: an earlier row has it")
        raise BadRowError(
            f"bad row {id_column}={value!r}, input row {first + i} in {path}: {reason}. The Ray engine needs a "
            f"unique, non-null id on every row, even with --on-bad-row skip; --engine local keeps the first row "
            f"of each id and rejects such rows.")


def _numbered(pieces) -> Any:
    """(file, input row of the first row, table) for each piece, rows counted across the files."""
    row = 0
    for piece in pieces:
        yield piece.path, row, piece.table
        row += piece.table.num_rows


def run(settings: dict[str, Any], artifact: str, inputs: InputFiles, out: OutputFolder, *, workers: int,
        threads: int, batch_rows: int, device: str = "cpu", ray_address: str | None = None,
        show_progress: bool = True, udf: type[RayEmbedBatches] = RayEmbedBatches) -> dict[str, Any]:
    """Embed `inputs` into `out` on Ray; `settings` are `TableEmbedder`'s keyword arguments."""
    try:
        import ray
        from ray.data import ActorPoolStrategy, DataContext
        from ray.data.checkpoint import CheckpointConfig
    except ImportError as exc:
        raise JobbertOnnxError(f"the Ray engine needs the [ray] extra: pip install 'jobbert-onnx[ray]' ({exc}).") from None

    id_column, text_column = settings["id_column"], settings["text_column"]
    check_columns(inputs, text_column, id_column)
    check_ids(inputs, id_column)
    started = time.perf_counter()
    rows_before = sum(out.footer(p).num_rows for p in out.data_files()) + out.count_rejects(id_column)
    start_ray = not ray.is_initialized()
    if start_ray:  # otherwise the caller's Ray session (and its resources) is used as it is
        # No address: RAY_ADDRESS if set, else a new Ray here ("local"). Plain ray.init() would join
        # whatever cluster /tmp/ray/ray_current_cluster names, e.g. another user's on this machine.
        address = ray_address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, num_cpus=workers * threads + EXTRA_CPUS if address == "local" else None,
                 include_dashboard=False, log_to_driver=show_progress)
    context = DataContext.get_current()
    saved = context.checkpoint_config, context.enable_progress_bars
    try:
        context.checkpoint_config = CheckpointConfig(
            id_column=id_column, checkpoint_path=out.file(CHECKPOINT_DIR), override_filesystem=out.filesystem,
            delete_checkpoint_on_success=False)  # OutputFolder.finish removes it once the summary is written
        context.enable_progress_bars = show_progress
        dataset = (
            _read(inputs, text_column)
            .select_columns([id_column, text_column])
            .repartition(target_num_rows_per_block=batch_rows)  # one output file per batch: resume granularity
            .map_batches(udf, fn_constructor_kwargs={"artifact": artifact, "device": device, "threads": threads,
                                                     "settings": settings, "output": out.location},
                         compute=ActorPoolStrategy(size=workers), num_cpus=threads,
                         num_gpus=1 if device.startswith("cuda") else None, batch_size=batch_rows,
                         batch_format="pyarrow")
        )
        try:
            dataset.write_parquet(out.path, filesystem=out.filesystem, **parquet_options([id_column, EMBEDDING_COLUMN]))
        except Exception as exc:
            ours = _our_error(exc)
            if ours is None:
                raise
            raise ours from None
    finally:
        context.checkpoint_config, context.enable_progress_bars = saved
        if start_ray:
            ray.shutdown()
    # this run's rows: those written and those newly rejected (rejects are redone on resume, not counted twice)
    rows_after = sum(out.footer(p).num_rows for p in out.data_files()) + out.count_rejects(id_column)
    return out.finish(id_column, "ray", time.perf_counter() - started, rows_after - rows_before)
