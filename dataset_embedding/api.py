"""`embed_dataset`: embed a column of a dataset into a Parquet dataset, locally or on Ray."""

from __future__ import annotations

import inspect
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobbert_onnx.runtime import Embedder, Manifest, UnknownHeadError

from .defaults import DatasetSettings
from .inputs import InputFiles, resolve_input
from .output import OutputFolder
from .table import TableEmbedder, artifact_sha256

if TYPE_CHECKING:
    from .ray_engine import RayEmbedBatches


def embed_dataset(
    artifact: str | os.PathLike | Embedder,
    input: str | os.PathLike,
    output: str | os.PathLike,
    settings: DatasetSettings | None = None,
    *,
    ray_udf: type[RayEmbedBatches] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Embed `text_column` of every row of `input` into the Parquet dataset `output`; return the summary.

    Args:
        artifact: an exported artifact folder, or (local engine) an `Embedder` already loaded.
        input: a Parquet, CSV or JSON-lines file, a folder of them, or a glob; a local path or any
            URL pyarrow or fsspec reads (s3://, gs://, hdfs://, ...).
        output: the output folder (local or URL). Started again, a run resumes where it stopped;
            a finished run returns its summary and writes nothing. It may lie inside an input
            folder (it is not read as input); one run at a time writes it (a lock, on local disks).
        settings: a `DatasetSettings` (default: all defaults), to which `changes` apply.
        ray_udf: a subclass of `RayEmbedBatches` to run instead of it.
        **changes: any field of `DatasetSettings`, by name: `text_column`, `id_column`, `head`,
            `normalize`, `prompt_name`, `engine`, `workers`, `threads`, `batch_rows`, `batch_size`,
            `device`, `on_bad_row`, `input_format`, `cache_mb`, `max_row_mb`, `ray_address`,
            `show_progress`, `dedup` (each field says what it is, its default and what it allows;
            docs/datasets.md lists them). A value that cannot work raises ValueError naming the
            setting and the value, before anything is read.
    """
    settings = (settings or DatasetSettings()).replace(**changes)
    settings.check()
    if settings.engine == "ray" and isinstance(artifact, Embedder):
        raise TypeError("the Ray engine loads the artifact in each actor: pass its folder, not an Embedder.")

    folder = Path(artifact.path if isinstance(artifact, Embedder) else artifact)
    manifest = artifact.manifest if isinstance(artifact, Embedder) else Manifest.load(folder)
    head = settings.head if settings.head is not None else manifest.default_head
    if head not in manifest.heads:
        raise UnknownHeadError.naming(head, manifest.heads)
    out = OutputFolder(os.fspath(output))
    # The output folder is left out of the input: it may lie in the input folder.
    inputs = resolve_input(os.fspath(input), settings.input_format, block_bytes=int(settings.max_row_mb * 2**20),
                           output=(out.filesystem, out.path))
    run_record = {
        "artifact_sha256": artifact_sha256(folder),
        "dimension": manifest.heads[head].dimension,
        # as this run resolves them: the prompt the Embedder prepends (the one asked for, else the
        # model's default), the input's format, and shards only on the local engine (Ray names its files)
        **settings.resume_record(
            head=head, input_format=inputs.format,
            prompt_name=settings.prompt_name if settings.prompt_name is not None else manifest.default_prompt_name,
            batch_rows=settings.batch_rows if settings.engine == "local" else None),
        "input": inputs.spec,
        "input_files": inputs.fingerprint(),
    }
    finished = out.open(run_record)
    if finished is not None:
        return finished
    try:
        return _run(artifact, folder, inputs, out, settings, head, ray_udf)
    finally:
        out.close()  # the folder's lock


# `help(embed_dataset)` and editors that read signatures at run time list every setting, with its
# type and default, as keyword-only parameters (the call takes them through **changes).
embed_dataset.__signature__ = inspect.signature(embed_dataset).replace(parameters=[
    *list(inspect.signature(embed_dataset).parameters.values())[:-1],
    *(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=item.default, annotation=item.type)
      for item in fields(DatasetSettings))])


def table_arguments(settings: DatasetSettings, head: str) -> dict[str, Any]:
    """`TableEmbedder`'s keyword arguments: the settings it takes, by name, and the resolved head."""
    names = inspect.signature(TableEmbedder).parameters
    return {**{item.name: getattr(settings, item.name) for item in fields(settings) if item.name in names},
            "head": head}


def _run(artifact: str | os.PathLike | Embedder, folder: Path, inputs: InputFiles, out: OutputFolder,
         settings: DatasetSettings, head: str, ray_udf: type[RayEmbedBatches] | None) -> dict[str, Any]:
    """Run the checked job on its engine, `out` opened (and locked)."""
    if settings.engine == "ray":
        from . import ray_engine

        return ray_engine.run(table_arguments(settings, head), str(folder.resolve()), inputs, out,
                              workers=settings.workers, threads=settings.threads or 1, batch_rows=settings.batch_rows,
                              device=settings.device, ray_address=settings.ray_address,
                              show_progress=settings.show_progress, udf=ray_udf or ray_engine.RayEmbedBatches)
    from . import local

    embedder = (artifact if isinstance(artifact, Embedder)
                else Embedder(folder, device=settings.device, threads=settings.threads))
    return local.run(TableEmbedder(embedder, **table_arguments(settings, head)), inputs, out, settings.batch_rows,
                     settings.show_progress)
