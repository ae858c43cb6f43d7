"""`embed_dataset`: embed a column of a dataset into a Parquet dataset, locally or on Ray."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobbert_onnx.runtime import Embedder, Manifest, UnknownHeadError

from .inputs import InputFiles, resolve_input
from .output import OutputFolder
from .defaults import BAD_ROW_POLICIES, DEFAULT_BATCH_ROWS, DEFAULT_CACHE_MB, DEFAULT_MAX_ROW_MB, ENGINES, check_numbers
from .table import TableEmbedder, artifact_sha256

if TYPE_CHECKING:
    from .ray_engine import RayEmbedBatches


def embed_dataset(
    artifact: str | os.PathLike | Embedder,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    head: str | None = None,
    normalize: bool = False,
    prompt_name: str | None = None,
    engine: str = "local",
    workers: int = 1,
    threads: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_size: int = 32,
    device: str = "cpu",
    on_bad_row: str = "fail",
    input_format: str | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
    max_row_mb: float = DEFAULT_MAX_ROW_MB,
    ray_address: str | None = None,
    show_progress: bool = True,
    dedup: bool = True,
    ray_udf: type[RayEmbedBatches] | None = None,
) -> dict[str, Any]:
    """Embed `text_column` of every row of `input` into the Parquet dataset `output`; return the summary.

    Args:
        artifact: an exported artifact folder, or (local engine) an `Embedder` already loaded.
        input: a Parquet, CSV or JSON-lines file, a folder of them, or a glob; a local path or any
            URL pyarrow or fsspec reads (s3://, gs://, hdfs://, ...).
        output: the output folder (local or URL). Started again, a run resumes where it stopped;
            a finished run returns its summary and writes nothing. It may lie inside an input
            folder (it is not read as input); one run at a time writes it (a lock, on local disks).
        text_column, id_column: the columns to read. Without `id_column` the output's `row` column
            holds the input row number (local engine only: Ray needs ids).
        head, normalize, prompt_name, batch_size, device: as in `Embedder` and `Embedder.encode`.
        engine: 'local' (one process, streaming) or 'ray' (Ray Data, `workers` actors).
        workers: Ray actors, each with one `Embedder`. threads: onnxruntime threads per Embedder
            (local default: onnxruntime's, one per core; Ray default: 1, matching each actor's num_cpus).
        batch_rows: rows per output file and per batch; also the resume granularity.
        on_bad_row: 'fail' stops at the first bad row with its id and the reason; 'skip' writes
            bad rows to OUTPUT/_rejects.parquet. A null id, an id that an earlier row has (the
            first row with it is kept), and a malformed JSON line are bad rows too.
        input_format: 'parquet', 'csv' or 'json' when the file names do not say.
        cache_mb: embeddings of recent texts kept across batches (0: none).
        max_row_mb: CSV and JSON are read in blocks of this size: the longest row must fit in one.
        ray_address: a running Ray cluster ('auto', 'ray://host:10001'); None starts Ray here
            unless it is already running in this process.
        dedup: embed each distinct text of a batch once (False only to measure what it saves).
        ray_udf: a subclass of `RayEmbedBatches` to run instead of it.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: must be one of {', '.join(ENGINES)}.")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row={on_bad_row!r}: must be one of {', '.join(BAD_ROW_POLICIES)}.")
    check_numbers({"workers": workers, "threads": threads, "batch_rows": batch_rows, "batch_size": batch_size,
                   "cache_mb": cache_mb, "max_row_mb": max_row_mb})
    if engine == "local" and workers != 1:
        raise ValueError("workers applies to the Ray engine; the local engine is one process (set threads).")
    if engine == "ray":
        if id_column is None:
            raise ValueError("the Ray engine needs an id column (--id-column): its workers read the files in "
                             "parallel, so there is no input row number, and Ray Data's checkpoint is keyed by id.")
        if isinstance(artifact, Embedder):
            raise TypeError("the Ray engine loads the artifact in each actor: pass its folder, not an Embedder.")

    folder = Path(artifact.path if isinstance(artifact, Embedder) else artifact)
    manifest = artifact.manifest if isinstance(artifact, Embedder) else Manifest.load(folder)
    head = head if head is not None else manifest.default_head
    if head not in manifest.heads:
        raise UnknownHeadError.naming(head, manifest.heads)
    out = OutputFolder(os.fspath(output))
    # The output folder is left out of the input: it may lie in the input folder.
    inputs = resolve_input(os.fspath(input), input_format, block_bytes=int(max_row_mb * 2**20),
                           output=(out.filesystem, out.path))
    run_record = {
        "artifact_sha256": artifact_sha256(folder),
        "head": head,
        "normalize": bool(normalize),
        # the prompt the Embedder prepends: the one asked for, else the model's default
        "prompt_name": prompt_name if prompt_name is not None else manifest.default_prompt_name,
        "dimension": manifest.heads[head].dimension,
        "engine": engine,
        "text_column": text_column,
        "id_column": id_column,
        "rows_per_shard": batch_rows if engine == "local" else None,
        "input_format": inputs.format,
        "input": inputs.spec,
        "input_files": inputs.fingerprint(),
    }
    finished = out.open(run_record)
    if finished is not None:
        return finished
    try:
        return _run(artifact, folder, inputs, out, engine=engine, settings={
            "text_column": text_column, "id_column": id_column, "head": head, "normalize": bool(normalize),
            "batch_size": batch_size, "on_bad_row": on_bad_row, "cache_mb": cache_mb, "dedup": dedup,
            "prompt_name": prompt_name}, workers=workers, threads=threads, batch_rows=batch_rows, device=device,
            ray_address=ray_address, show_progress=show_progress, ray_udf=ray_udf)
    finally:
        out.close()  # the folder's lock


def _run(artifact: str | os.PathLike | Embedder, folder: Path, inputs: InputFiles, out: OutputFolder, *, engine: str,
         settings: dict[str, Any], workers: int, threads: int | None, batch_rows: int, device: str,
         ray_address: str | None, show_progress: bool, ray_udf: type[RayEmbedBatches] | None) -> dict[str, Any]:
    """Run the checked job on its engine, `out` opened (and locked)."""
    if engine == "ray":
        from . import ray_engine

        return ray_engine.run(settings, str(folder.resolve()), inputs, out, workers=workers, threads=threads or 1,
                              batch_rows=batch_rows, device=device, ray_address=ray_address,
                              show_progress=show_progress, udf=ray_udf or ray_engine.RayEmbedBatches)
    from . import local

    embedder = artifact if isinstance(artifact, Embedder) else Embedder(folder, device=device, threads=threads)
    return local.run(TableEmbedder(embedder, **settings), inputs, out, batch_rows, show_progress)
