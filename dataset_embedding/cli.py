"""The `embed-dataset` subcommand: its arguments and what it runs.

`jobbert-onnx embed-dataset ...` (the main CLI adds it with `add_parser`) and
`python -m jobbert_onnx.cli embed-dataset ...` are the same command.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobbert_onnx.runtime import JobbertOnnxError

from .defaults import DatasetSettings, flag_fields, help_text

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
    for flags, item in flag_fields():  # one flag per setting, from its field (datasets.defaults)
        meta, options = item.metadata, {}
        if isinstance(item.default, bool):
            options["action"] = "store_false" if item.default else "store_true"
        elif meta["bound"] is not None:
            options["type"] = int if meta["bound"].integer else float
        elif meta["choices"] is not None:
            options["choices"] = meta["choices"]
        text = help_text(item.name)
        if options.get("action") == "store_false":  # --no-progress: the opposite of the setting
            text = f"do not {text[0].lower()}{text[1:]}"
        parser.add_argument(*flags, dest=item.name, default=item.default, help=text, **options)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Run `embed-dataset` with parsed arguments; print the summary as one JSON line on stderr."""
    settings = DatasetSettings(**{item.name: getattr(args, item.name) for _, item in flag_fields()})
    settings.check(flags=True)  # before pyarrow loads, naming the flags
    try:
        from .api import embed_dataset
    except ImportError as exc:
        raise JobbertOnnxError(f"embed-dataset needs the [datasets] extra: pip install 'jobbert-onnx[datasets]' "
                               f"({exc}).") from None
    summary = embed_dataset(args.artifact, args.input, args.output, settings)
    print(f"{args.output}: {json.dumps(summary)}", file=sys.stderr)
