"""The `embed-dataset` subcommand: its arguments and what it runs.

`jobbert-onnx embed-dataset ...` (the main CLI adds it with `add_parser`) and
`python -m jobbert_onnx.batch embed-dataset ...` are the same command.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobbert_onnx.runtime import JobbertOnnxError

from .defaults import (BAD_ROW_POLICIES, DEFAULT_BATCH_ROWS, DEFAULT_CACHE_MB, DEFAULT_MAX_ROW_MB, ENGINES,
                       INPUT_FORMATS, check_numbers)

COMMAND = "embed-dataset"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `embed-dataset` to a parser's subcommands; it runs `run(args)` through `args.run`."""
    parser = subparsers.add_parser(
        COMMAND, help="embed a column of a Parquet/CSV/JSONL dataset into a Parquet dataset (resumable)",
        description="Embed TEXT-COLUMN of every row of INPUT into the Parquet dataset OUTPUT: the id column (or "
                    "'row', the input row number) and 'embedding'. Run it again to resume; a finished run "
                    "writes nothing.")
    parser.add_argument("artifact", help="exported artifact folder")
    parser.add_argument("input", help="a .parquet, .csv or .jsonl file, a folder of them or a glob; local or a URL "
                                      "(s3://, gs://, hdfs://, any fsspec URL)")
    parser.add_argument("output", help="output folder (local or URL); it may lie inside the input folder, and one "
                                       "run at a time writes it")
    parser.add_argument("--text-column", "--column", dest="text_column", default="text",
                        help="column holding the texts (default: text)")
    parser.add_argument("--id-column", help="column identifying each row, copied to the output (needed by Ray; "
                                            "default: the input row number, as 'row')")
    parser.add_argument("--head", help="head to use (default: the artifact's default head)")
    parser.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    parser.add_argument("--prompt-name", help="prompt of the model's config to prepend (default: the model's "
                                              "default_prompt_name, if any)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: one process, streaming (default); ray: Ray Data with --workers actors")
    parser.add_argument("--workers", type=int, default=1, help="Ray actors, one Embedder each (default 1)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads per Embedder (default: one per core "
                                                    "locally, 1 per Ray actor)")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                        help=f"rows per output file and per batch; what a resumed run redoes at most "
                             f"(default {DEFAULT_BATCH_ROWS})")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per model call (default 32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (Ray: each actor gets one GPU)")
    parser.add_argument("--on-bad-row", choices=BAD_ROW_POLICIES, default="fail",
                        help="a null or non-string text, a null or repeated id (the first row with an id is kept), "
                             "a malformed JSON line: fail (default) or skip it into OUTPUT/_rejects.parquet")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, help="when the file names do not tell")
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_MB,
                        help=f"embeddings of recent texts kept across batches, in MB (default {DEFAULT_CACHE_MB}; "
                             f"0: none)")
    parser.add_argument("--max-row-mb", type=float, default=DEFAULT_MAX_ROW_MB,
                        help=f"CSV and JSON are read in blocks of this size: the longest row must fit in one "
                             f"(default {DEFAULT_MAX_ROW_MB})")
    parser.add_argument("--ray-address", help="a running Ray cluster: 'auto' or ray://HOST:10001 "
                                              "(default: start Ray on this machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Run `embed-dataset` with parsed arguments; print the summary as one JSON line on stderr."""
    check_numbers({name: getattr(args, name) for name in ("workers", "threads", "batch_rows", "batch_size",
                                                          "cache_mb", "max_row_mb")}, flags=True)
    try:
        from .api import embed_dataset
    except ImportError as exc:
        raise JobbertOnnxError(f"embed-dataset needs the [batch] extra: pip install 'jobbert-onnx[batch]' "
                               f"({exc}).") from None
    summary = embed_dataset(
        args.artifact, args.input, args.output, text_column=args.text_column, id_column=args.id_column,
        head=args.head, normalize=args.normalize, prompt_name=args.prompt_name, engine=args.engine,
        workers=args.workers, threads=args.threads, batch_rows=args.batch_rows, batch_size=args.batch_size,
        device=args.device, on_bad_row=args.on_bad_row, input_format=args.input_format, cache_mb=args.cache_mb,
        max_row_mb=args.max_row_mb, ray_address=args.ray_address, show_progress=not args.no_progress)
    print(f"{args.output}: {json.dumps(summary)}", file=sys.stderr)
