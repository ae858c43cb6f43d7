"""The `jobbert-onnx` command: export, embed, similarity, info, verify.

Errors print as one line on stderr with a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from jobbert_onnx.runtime.errors import JobbertOnnxError


class UsageError(JobbertOnnxError):
    """A bad combination of command-line arguments or an unreadable input file."""


# -- embed: reading texts and writing embeddings -------------------------------------------
def read_texts(path: Path, column: str | None) -> list[str]:
    """Texts from a .txt (one per line), .jsonl or .csv file; `column` names the JSONL/CSV field."""
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc}).") from exc
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        field = column or "text"
        texts = []
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                texts.append(record[field])
            except (json.JSONDecodeError, TypeError, KeyError) as exc:
                raise UsageError(f"{path}:{number}: expected a JSON object with a {field!r} field ({exc}).") from None
        return texts
    if suffix == ".csv":
        rows = csv.DictReader(content.splitlines())
        field = column or "text"
        if rows.fieldnames is None or field not in rows.fieldnames:
            raise UsageError(f"{path}: no column {field!r} (columns: {rows.fieldnames}); choose one with --column.")
        return [row[field] for row in rows]
    if column is not None:
        raise UsageError(f"{path}: --column applies to .jsonl and .csv inputs only.")
    return content.splitlines()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp)` on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_embeddings(path: Path | None, texts: list[str], embeddings) -> None:
    """Save to .npy or .jsonl, or print JSON lines when `path` is None."""
    import numpy as np

    def jsonl_lines():
        for text, row in zip(texts, embeddings):
            yield json.dumps({"text": text, "embedding": [float(v) for v in row]}, ensure_ascii=False) + "\n"

    if path is None:
        sys.stdout.writelines(jsonl_lines())
    elif path.suffix == ".npy":
        # np.save appends .npy to names without it, so write through an open handle.
        def save(temp: Path) -> None:
            with open(temp, "wb") as handle:
                np.save(handle, embeddings)
        write_atomically(path, save)
    elif path.suffix == ".jsonl":
        write_atomically(path, lambda temp: temp.write_text("".join(jsonl_lines()), encoding="utf-8"))
    else:
        raise UsageError(f"{path}: unknown output format; use a .npy or .jsonl file name.")


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
    )
    with _warnings_as_lines(TokenizerDisagreementWarning):
        out = export_model(config)
    _print_summary(out)


def cmd_embed(args: argparse.Namespace) -> None:
    from jobbert_onnx.runtime import Embedder

    if args.input and args.texts:
        raise UsageError("give texts as arguments or with --input, not both.")
    texts = read_texts(Path(args.input), args.column) if args.input else list(args.texts)
    if not texts:
        raise UsageError("no texts: pass them as arguments or with --input FILE.")
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix not in (".npy", ".jsonl"):
        raise UsageError(f"{output}: unknown output format; use a .npy or .jsonl file name.")
    embedder = Embedder(args.artifact, device=args.device)
    embeddings = embedder.encode(texts, head=args.head, batch_size=args.batch_size, normalize=args.normalize,
                                 show_progress=output is not None and len(texts) > args.batch_size)
    write_embeddings(output, texts, embeddings)
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

    manifest = Manifest.load(folder)
    print(f"artifact   {folder}")
    print(f"source     {manifest.source.get('model')} ({manifest.source.get('kind')}"
          f"{', revision ' + manifest.source['revision'] if manifest.source.get('revision') else ''})")
    print(f"precision  {manifest.precision}, opset {manifest.opset}")
    check, chosen = manifest.tokenizer_check, ""
    if check:  # absent from manifests older than the tokenizer check
        other = "transformers' tokenizer" if check["chosen"] == "checkpoint" else "the checkpoint's tokenizer.json"
        chosen = f"; {check['chosen']}"
        if check.get("compared"):
            chosen += f", {check['disagreements']} of {check['texts_compared']} checked texts differ with {other}"
    print(f"tokenizer  max_seq_length {manifest.tokenizer.max_seq_length}, do_lower_case {manifest.tokenizer.do_lower_case}"
          f"{chosen}")
    print(f"encoder    inputs {', '.join(manifest.encoder.input_names)}; hidden {manifest.encoder.hidden_size}; "
          f"{manifest.encoder.transform.get('method')}")
    plan = manifest.encoder.transform.get("plan")
    if plan:  # int8 exports that validated: which of the plans tried was kept (export/int8_plans.py)
        last = plan["attempts"][-1]
        kept = f"{last['fp32_matmuls']} most sensitive matmuls kept fp32" if last["fp32_matmuls"] else "every matmul int8"
        verdict = "meets" if plan["met_margin"] else "misses"
        print(f"int8 plan  {plan['chosen'] + 1} of {len(plan['attempts'])} tried: {kept}; worst probe cosine "
              f"{last['min_cosine']:.5f} {verdict} the target {plan['target_min_cosine']}")
    print(f"pooling    {'+'.join(manifest.pooling.modes)} -> {manifest.pooling.dimension}")
    for name, head in manifest.heads.items():
        marker = " (default)" if name == manifest.default_head else ""
        parity = manifest.validation.get("heads", {}).get(name)
        figures = f"; min cosine {parity['min_cosine']:.6f}, mean {parity['mean_cosine']:.6f}" if parity else ""
        print(f"head       {name}{marker}: {head.dimension} dims [{', '.join(head.modules) or 'identity'}]{figures}")
    if not manifest.validation.get("performed"):
        print(f"validation not performed: {manifest.validation.get('reason')}")
    size = sum(entry.size for entry in manifest.files.values())
    print(f"files      {len(manifest.files)}, {size / 1e6:.1f} MB")


def cmd_info(args: argparse.Namespace) -> None:
    _print_summary(Path(args.artifact))


def cmd_verify(args: argparse.Namespace) -> None:
    from jobbert_onnx.runtime.manifest import Manifest

    manifest = Manifest.load(args.artifact)
    manifest.verify_files(Path(args.artifact))
    print(f"OK: {len(manifest.files)} files match their sha256 in {Path(args.artifact) / 'manifest.json'}")


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobbert-onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="export a sentence-transformers model to an artifact folder")
    export.add_argument("model", help="local model folder or Hugging Face hub id (e.g. TechWolf/JobBERT-v3)")
    export.add_argument("out_dir", help="artifact folder to create")
    export.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    export.add_argument("--revision", help="hub revision (branch, tag or commit)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer (default 17)")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    export.add_argument("--no-validate", action="store_true", help="skip the comparison with sentence-transformers")
    export.add_argument("--allow-pickle", action="store_true", help="allow loading pickled pytorch_model.bin weights")
    export.add_argument("--min-cosine", type=float, help="validation threshold (default: fp32 0.99999, fp16 0.999, int8 0.99)")
    export.add_argument("--margin", type=float,
                        help="int8: try more accurate plans until the worst probe reaches threshold + margin "
                             "(default 0.005; the threshold itself is never lowered)")
    export.add_argument("--calibration", metavar="FILE",
                        help="int8: texts to calibrate on, one per line (default: built-in job titles and skill lists); "
                             "also compared by the tokenizer check")
    export.add_argument("--tokenizer", choices=["transformers", "checkpoint"], default="transformers",
                        help="tokenizer to ship: 'transformers' (default), what AutoTokenizer builds and "
                             "sentence-transformers runs here; 'checkpoint', the checkpoint's tokenizer.json as is, "
                             "as TEI, fastembed and transformers 4 run it")
    export.set_defaults(run=cmd_export)

    embed = commands.add_parser("embed", help="embed texts with an artifact")
    embed.add_argument("artifact")
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--input", help="file of texts: .txt (one per line), .jsonl or .csv")
    embed.add_argument("--column", help="field of a .jsonl/.csv input (default: text)")
    embed.add_argument("--output", help="write to FILE.npy or FILE.jsonl (default: JSON lines on stdout)")
    embed.add_argument("--head", help="head to use (default: the artifact's default head)")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    embed.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    embed.set_defaults(run=cmd_embed)

    sim = commands.add_parser("similarity", help="print the cosine similarity matrix of a few texts")
    sim.add_argument("artifact")
    sim.add_argument("texts", nargs="+")
    sim.add_argument("--head", help="head to use (default: the artifact's default head)")
    sim.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    sim.set_defaults(run=cmd_similarity)

    info = commands.add_parser("info", help="describe an artifact")
    info.add_argument("artifact")
    info.set_defaults(run=cmd_info)

    verify = commands.add_parser("verify", help="check every file of an artifact against its sha256")
    verify.add_argument("artifact")
    verify.set_defaults(run=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jobbert-onnx` console script."""
    args = build_parser().parse_args(argv)
    try:
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
