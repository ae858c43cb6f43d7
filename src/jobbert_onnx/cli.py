"""The `jobbert-onnx` command: export, embed, embed-dataset, similarity, info, verify, serve.

Errors print as one line on stderr with a non-zero exit; `--debug` shows the traceback. Before a
command runs, on CPUs other than x86-64, a child process checks that onnxruntime runs here
(`jobbert_onnx.cpu_probe`; `JOBBERT_ONNX_CPU_PROBE=auto|always|never`): a build that uses
instructions the CPU lacks is an error line instead of "Illegal instruction". Nothing that this
module imports at the top loads onnxruntime (or numpy).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from jobbert_onnx.artifact_summary import summary_lines
from jobbert_onnx.cpu_probe import check_onnxruntime_runs, probe_wanted
from jobbert_onnx.datasets.cli import add_parser as add_dataset_parser  # pyarrow loads only when it runs
from jobbert_onnx.embed_files import embeddings_writer, read_texts, refuse_input_as_output
from jobbert_onnx.export import defaults  # torch-free: the exporter's choices and defaults
from jobbert_onnx.runtime.errors import JobbertOnnxError
from jobbert_onnx.serve.cli import add_parser as add_serve_parser  # stdlib only; the server loads when run


class UsageError(JobbertOnnxError):
    """A bad combination of command-line arguments."""


# -- commands ------------------------------------------------------------------------------
@contextmanager
def _warnings_as_lines(category: type[Warning]) -> Iterator[None]:
    """Print `category` warnings like errors (one line, no source location); others as usual."""
    with warnings.catch_warnings():
        show_default = warnings.showwarning

        def show(message, shown_category, *args, **kwargs) -> None:
            if issubclass(shown_category, category):
                print(f"jobbert-onnx: warning: {' '.join(str(message).split())}", file=sys.stderr)
            else:
                show_default(message, shown_category, *args, **kwargs)

        warnings.showwarning = show
        yield


def cmd_export(args: argparse.Namespace) -> None:
    try:
        from jobbert_onnx.export import ExportConfig, export_model
        from jobbert_onnx.export.tokenizer_choice import TokenizerDisagreementWarning
    except ImportError as exc:
        raise UsageError(f"exporting needs the [export] extra: pip install 'jobbert-onnx[export]' ({exc}).") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar, the exporter's, is enough
    config = ExportConfig(
        model=args.model, output=Path(args.out_dir), precision=args.precision, revision=args.revision,
        opset=args.opset, overwrite=args.overwrite, validate=not args.no_validate,
        allow_pickle=args.allow_pickle, min_cosine=args.min_cosine, margin=args.margin,
        calibration=Path(args.calibration) if args.calibration else None, tokenizer=args.tokenizer,
        keep_vocabulary=Path(args.keep_vocabulary) if args.keep_vocabulary else None,
    )
    with _warnings_as_lines(TokenizerDisagreementWarning):
        out = export_model(config)
    _print_summary(out)


def cmd_embed(args: argparse.Namespace) -> None:
    from jobbert_onnx.runtime import Embedder

    if args.input and args.texts:
        raise UsageError("give texts as arguments or with --input, not both.")
    if args.column and not args.input:
        raise UsageError("--column applies to an --input file.")
    if args.input and args.output:
        refuse_input_as_output(Path(args.output), Path(args.input))
    texts = read_texts(Path(args.input), args.column) if args.input else list(args.texts)
    if not texts:
        raise UsageError(f"no texts in {args.input}." if args.input else
                         "no texts: pass them as arguments or with --input FILE.")
    output = Path(args.output) if args.output else None
    # Passed only when given, so that embed runs on an Embedder without prompt support too.
    prompt = {"prompt_name": args.prompt_name} if args.prompt_name is not None else {}
    # The output file is opened before the model loads: a bad path must not cost hours of encoding.
    with embeddings_writer(output) as write:
        embedder = Embedder(args.artifact, device=args.device)
        embeddings = embedder.encode(texts, head=args.head, batch_size=args.batch_size, normalize=args.normalize,
                                     show_progress=output is not None and len(texts) > args.batch_size,
                                     **prompt)
        write(texts, embeddings)
    if output is not None:
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {output}", file=sys.stderr)


def cmd_similarity(args: argparse.Namespace) -> None:
    from jobbert_onnx.runtime import Embedder, similarity

    embedder = Embedder(args.artifact, device=args.device)
    matrix = similarity(*(2 * [embedder.encode(args.texts, head=args.head)]))
    # Texts go last on each row: CJK characters are double width and would break the columns.
    print("     " + "".join(f"{f'[{j}]':>8}" for j in range(len(args.texts))))
    for i, (text, row) in enumerate(zip(args.texts, matrix)):
        print(f"{f'[{i}]':<5}" + "".join(f"{v:8.3f}" for v in row) + f"   {text}")


def _print_summary(folder: Path) -> None:
    from jobbert_onnx.runtime.manifest import Manifest

    print("\n".join(summary_lines(Manifest.load(folder), folder)))


def cmd_info(args: argparse.Namespace) -> None:
    _print_summary(Path(args.artifact))


def cmd_verify(args: argparse.Namespace) -> None:
    from jobbert_onnx.runtime.manifest import Manifest

    manifest = Manifest.load(args.artifact)
    manifest.verify_files(Path(args.artifact))
    manifest.verify_graphs(Path(args.artifact))  # the right sha256 does not make tokenizer.json a head
    print(f"OK: {len(manifest.files)} files match their sha256 in {Path(args.artifact) / 'manifest.json'}; "
          f"{len(manifest.graph_files())} graphs load with the inputs and outputs the runtime expects")


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobbert-onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="export a sentence-transformers model to an artifact folder")
    export.add_argument("model", help="local model folder or Hugging Face hub id (e.g. TechWolf/JobBERT-v3)")
    export.add_argument("out_dir", help="artifact folder to create")
    export.add_argument("--precision", choices=defaults.PRECISIONS, default="fp32")
    export.add_argument("--revision", help="hub revision (branch, tag or commit)")
    export.add_argument("--opset", type=int, default=defaults.MIN_OPSET,
                        help=f"ONNX opset, {defaults.MIN_OPSET} or newer (default {defaults.MIN_OPSET})")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    export.add_argument("--no-validate", action="store_true", help="skip the comparison with sentence-transformers")
    export.add_argument("--allow-pickle", action="store_true", help="allow loading pickled pytorch_model.bin weights")
    thresholds = ", ".join(f"{p} {v}" for p, v in defaults.DEFAULT_MIN_COSINE.items())
    export.add_argument("--min-cosine", type=float, help=f"validation threshold (default: {thresholds})")
    export.add_argument("--margin", type=float,
                        help="int8: try more accurate plans until the worst probe reaches threshold + margin "
                             f"(default {defaults.DEFAULT_MARGIN['int8']}; the threshold itself is never lowered)")
    export.add_argument("--calibration", metavar="FILE",
                        help="int8: texts to calibrate on, one per line (default: built-in job titles and skill lists); "
                             "also compared by the tokenizer check")
    export.add_argument("--tokenizer", choices=defaults.TOKENIZER_CHOICES, default=defaults.DEFAULT_TOKENIZER,
                        help="tokenizer to ship: 'transformers' (default), what AutoTokenizer builds and "
                             "sentence-transformers runs here; 'checkpoint', the checkpoint's tokenizer.json as is, "
                             "as TEI, fastembed and transformers 4 run it")
    export.add_argument("--keep-vocabulary", metavar="FILE",
                        help="keep only the tokens that these texts (one per line) need, plus every single-character "
                             "piece: a smaller artifact that gives these texts the same token ids; other texts may "
                             "split into smaller pieces (Unigram and WordPiece tokenizers only)")
    export.set_defaults(run=cmd_export)

    embed = commands.add_parser("embed", help="embed texts with an artifact")
    embed.add_argument("artifact")
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--input", help="file of texts: .txt (one per line, blank lines included), JSON lines "
                                       "(.jsonl, .ndjson, .json) or .csv")
    embed.add_argument("--column", help="field of a JSON-lines or .csv input (default: text)")
    embed.add_argument("--output", help="write to FILE.npy or FILE.jsonl (default: JSON lines on stdout)")
    embed.add_argument("--head", help="head to use (default: the artifact's default head)")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    embed.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    embed.add_argument("--prompt-name", metavar="NAME",
                       help="prepend the model's prompt NAME (from config_sentence_transformers.json)")
    embed.set_defaults(run=cmd_embed)

    add_dataset_parser(commands)

    sim = commands.add_parser("similarity", help="print the cosine similarity matrix of a few texts")
    sim.add_argument("artifact")
    sim.add_argument("texts", nargs="+")
    sim.add_argument("--head", help="head to use (default: the artifact's default head)")
    sim.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    sim.set_defaults(run=cmd_similarity)

    info = commands.add_parser("info", help="describe an artifact")
    info.add_argument("artifact")
    info.set_defaults(run=cmd_info)

    verify = commands.add_parser("verify", help="check every file of an artifact against its sha256, and that "
                                                "each graph loads with the inputs and outputs the runtime expects")
    verify.add_argument("artifact")
    verify.set_defaults(run=cmd_verify)

    add_serve_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jobbert-onnx` console script."""
    args = build_parser().parse_args(argv)
    try:
        if probe_wanted():
            check_onnxruntime_runs()
        args.run(args)
    except (JobbertOnnxError, ValueError, TypeError, OSError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"jobbert-onnx: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jobbert-onnx: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
