"""`export_model`: checkpoint -> fp32 graphs -> precision transform -> validation -> artifact."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from jobbert_onnx.runtime.manifest import EncoderSpec, HeadEntry, Manifest, PoolingSpec, TokenizerSpec

from . import graphs
from .artifact import check_target, save_graph, staged_folder
from .calibration import builtin_texts, read_texts
from .checkpoint import CheckpointError, CheckpointSpec, read_checkpoint
from .precision import DEFAULT_MIN_COSINE, PRECISIONS, UNCHANGED, Fp16Options, Int8Options, graph_transforms
from .probes import probe_texts
from .source import resolve_source
from .validation import check_thresholds, reference_embeddings, validate_artifact

_VERSIONED = ("jobbert-onnx", "torch", "transformers", "sentence-transformers", "onnx", "onnxruntime",
              "onnxruntime-gpu", "tokenizers")


@dataclass
class ExportConfig:
    """What to export and how. `min_cosine=None` takes the precision's default threshold."""

    model: str
    output: Path
    precision: str = "fp32"
    revision: str | None = None
    opset: int = graphs.MIN_OPSET
    overwrite: bool = False
    validate: bool = True
    allow_pickle: bool = False
    min_cosine: float | None = None
    calibration: Path | None = None  # int8: a text file, one text per line (default: built-in texts)
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.opset < graphs.MIN_OPSET:
            raise ValueError(f"opset {self.opset}: must be {graphs.MIN_OPSET} or newer")

    @property
    def threshold(self) -> float:
        return DEFAULT_MIN_COSINE[self.precision] if self.min_cosine is None else self.min_cosine


def _versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _load_tokenizer(spec: CheckpointSpec):
    """The tokenizer sentence-transformers really runs, loaded once for the whole export.

    transformers rebuilds some tokenizers from `tokenizer.json` (XLM-RoBERTa's among them) rather
    than using the file as it is, so the artifact gets the rebuilt backend, not a copy of the file.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.transformer.path)
    if not tokenizer.is_fast or tokenizer.pad_token_id is None:
        raise CheckpointError(
            f"{spec.transformer.path}: the tokenizer must be a fast tokenizer with a pad token, "
            "so that the runtime can reproduce it with the tokenizers library."
        )
    return tokenizer


def _write_tokenizer(spec: CheckpointSpec, tokenizer, stage: Path) -> TokenizerSpec:
    """Write the tokenizer's backend as `tokenizer.json` and describe how to call it."""
    (stage / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    return TokenizerSpec(
        file="tokenizer.json",
        max_seq_length=spec.transformer.max_seq_length,
        do_lower_case=spec.transformer.do_lower_case,
        pad_token_id=int(tokenizer.pad_token_id),
        pad_token=str(tokenizer.pad_token),
    )


@dataclass
class _Fp32Graphs:
    folder: Path
    encoder_inputs: list[str]
    heads: dict[str, HeadEntry]


def _export_fp32(spec: CheckpointSpec, tokenizer_outputs: list[str], folder: Path, opset: int,
                 done: Callable[[str], None]) -> _Fp32Graphs:
    """Export the encoder, the pooling and every head as fp32 graphs into `folder`."""
    from .torch_modules import EncoderModule, HeadModule, PoolingModule

    encoder = EncoderModule(spec.transformer, tokenizer_outputs)
    graphs.export_encoder(encoder, folder / graphs.ENCODER_FILE, opset)
    done(graphs.ENCODER_FILE)
    graphs.export_pooling(PoolingModule(spec.pooling), spec.transformer.hidden_size, folder / graphs.POOLING_FILE, opset)
    done(graphs.POOLING_FILE)
    pooled_dim = spec.pooling.output_dimension
    heads = {}
    for name, head in spec.heads.items():
        graphs.export_head(HeadModule(head), pooled_dim, folder / graphs.head_file(name), opset)
        heads[name] = HeadEntry(file=graphs.head_file(name), dimension=head.output_dimension(pooled_dim),
                                modules=[m.describe() for m in head.modules])
        done(graphs.head_file(name))
    return _Fp32Graphs(folder, encoder.input_names, heads)


def _calibration_feeds(texts: list[str], tokenizer, spec: CheckpointSpec, input_names: list[str],
                       batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """Encoder feeds for `texts`, tokenized as the runtime will (stripped, truncated, padded)."""
    feeds = []
    for start in range(0, len(texts), batch_size):
        batch = [text.strip() for text in texts[start:start + batch_size]]
        tokens = tokenizer(batch, padding=True, truncation=True, max_length=spec.transformer.max_seq_length,
                           return_tensors="np")
        feeds.append({name: np.asarray(tokens[name], dtype=np.int64) for name in input_names})
    return feeds


def _place(fp32: Path, stage: Path, rel: str, transform: Fp16Options | Int8Options | None,
           calibration: list[dict[str, np.ndarray]] = (), external_weights: bool = False) -> dict:
    """Copy or transform one fp32 graph into the artifact, writing it once; returns what was
    done, for the manifest."""
    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
    if transform is None and not external_weights:
        shutil.copyfile(fp32 / rel, stage / rel)
        return dict(UNCHANGED)
    import onnx

    model, info = onnx.load(str(fp32 / rel)), dict(UNCHANGED)
    if transform is not None:
        model, info = transform.apply(model, calibration)
    save_graph(model, stage / rel, external_weights)
    return info


def export_model(config: ExportConfig) -> Path:
    """Export `config.model` to an artifact folder at `config.output` and return its path.

    Nothing is written at `config.output` unless every step, validation included, succeeds.
    """
    check_target(config.output, config.overwrite)  # fail before any slow work
    source = resolve_source(config.model, config.revision)
    spec = read_checkpoint(source.path, allow_pickle=config.allow_pickle)
    hf_tokenizer = _load_tokenizer(spec)
    calibration_texts = None
    if config.precision == "int8":
        calibration_texts = read_texts(config.calibration) if config.calibration else builtin_texts()
    probes = probe_texts()
    steps = 3 + len(spec.heads) + 2 * config.validate
    with tqdm(total=steps, desc="export", unit="step", disable=not config.show_progress) as progress:

        def done(stage: str) -> None:
            progress.set_postfix_str(stage)
            progress.update()

        reference = None
        if config.validate:
            reference = reference_embeddings(source.path, probes, list(spec.heads), routed=spec.router_kind is not None)
            done("sentence-transformers reference")

        with tempfile.TemporaryDirectory(prefix="jobbert-onnx-fp32-") as scratch, \
                staged_folder(config.output, config.overwrite) as stage:
            fp32 = _export_fp32(spec, hf_tokenizer.model_input_names, Path(scratch), config.opset, done)
            encoder_transform, head_transform = graph_transforms(config.precision)
            feeds = (_calibration_feeds(calibration_texts, hf_tokenizer, spec, fp32.encoder_inputs)
                     if calibration_texts else [])
            encoder_info = _place(fp32.folder, stage, graphs.ENCODER_FILE, encoder_transform, feeds,
                                  external_weights=True)
            if calibration_texts:
                encoder_info["calibration_texts"] = str(config.calibration) if config.calibration else "built-in"
            pooling_info = _place(fp32.folder, stage, graphs.POOLING_FILE, None)
            for entry in fp32.heads.values():
                entry.transform = _place(fp32.folder, stage, entry.file, head_transform)
            tokenizer = _write_tokenizer(spec, hf_tokenizer, stage)
            done(f"{config.precision} graphs and tokenizer")

            manifest = Manifest(
                source=source.to_manifest(),
                versions=_versions(),
                opset=config.opset,
                precision=config.precision,
                tokenizer=tokenizer,
                encoder=EncoderSpec(file=graphs.ENCODER_FILE, input_names=fp32.encoder_inputs,
                                    hidden_size=spec.transformer.hidden_size, transform=encoder_info),
                pooling=PoolingSpec(file=graphs.POOLING_FILE, modes=spec.pooling.modes,
                                    dimension=spec.pooling.output_dimension, transform=pooling_info),
                heads=fp32.heads,
                default_head=spec.default_head,
                validation={"performed": False, "reason": "--no-validate: the reference stack was not run"},
            )
            manifest.record_files(stage)
            manifest.save(stage)
            if reference is not None:
                results = validate_artifact(stage, probes, reference)
                manifest.validation = {
                    "performed": True,
                    "reference": "sentence-transformers on PyTorch (fp32, CPU)",
                    "probe_count": len(probes),
                    "min_cosine_threshold": config.threshold,
                    "heads": {head: r.to_dict() for head, r in results.items()},
                }
                manifest.save(stage)  # the manifest is not in its own file list, so checksums still hold
                done("validation")
                check_thresholds(results, config.threshold, config.precision)
    return config.output
