"""`export_model`: checkpoint -> fp32 graphs -> precision transform -> validation -> artifact."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import metadata
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from jobbert_onnx.runtime.manifest import EncoderEntry, HeadEntry, Manifest, PoolingEntry, TokenizerEntry, sha256_of

from . import graphs, int8_plans
from .artifact import check_target, save_graph, staged_folder
from .calibration import builtin_texts, read_texts
from .checkpoint import CheckpointError, CheckpointSpec, read_checkpoint
from .defaults import DEFAULT_MARGIN, DEFAULT_MIN_COSINE, DEFAULT_TOKENIZER, MIN_OPSET, PRECISIONS, TOKENIZER_CHOICES
from .fusion import fuse_encoder_file
from .precision import UNCHANGED, Calibration, Fp16Options, Int8Options, graph_transforms
from .probes import probe_texts
from .source import resolve_source
from .tokenizer_choice import TokenizerCheck, choose_tokenizer, tokenizer_entry
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
    opset: int = MIN_OPSET
    overwrite: bool = False
    validate: bool = True
    allow_pickle: bool = False
    min_cosine: float | None = None
    margin: float | None = None  # int8: try more accurate plans until min cosine >= threshold + margin
    calibration: Path | None = None  # int8: a text file, one text per line (default: built-in texts)
    keep_vocabulary: Path | None = None  # a text file: keep only the tokens its lines need (export/vocabulary.py)
    show_progress: bool = True
    # "transformers": what AutoTokenizer builds (what sentence-transformers runs here);
    # "checkpoint": the checkpoint's tokenizer.json as is. See export/tokenizer_choice.py.
    tokenizer: str = DEFAULT_TOKENIZER
    int8: Int8Options | None = None  # int8: the recipe, when not the default Int8Options()

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.int8 is not None and self.precision != "int8":
            raise ValueError(f"an int8 recipe was given for precision {self.precision!r}")
        if self.opset < MIN_OPSET:
            raise ValueError(f"opset {self.opset}: must be {MIN_OPSET} or newer")
        if self.tokenizer not in TOKENIZER_CHOICES:
            raise ValueError(f"tokenizer {self.tokenizer!r}: expected one of {', '.join(TOKENIZER_CHOICES)}")

    @property
    def threshold(self) -> float:
        return DEFAULT_MIN_COSINE[self.precision] if self.min_cosine is None else self.min_cosine

    @property
    def target_margin(self) -> float:
        return DEFAULT_MARGIN[self.precision] if self.margin is None else self.margin


def _versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _load_tokenizer(spec: CheckpointSpec, config: ExportConfig, probes: list[str],
                    calibration: list[str]) -> tuple[object, TokenizerCheck]:
    """The chosen tokenizer, as a transformers tokenizer loaded once for the whole export, and how it
    compares with the other candidate on the probes and calibration texts (warns if they disagree).

    transformers rebuilds some tokenizers from `tokenizer.json` (XLM-RoBERTa's among them) rather
    than using the file as it is; `config.tokenizer` picks the rebuild or the file.
    """
    return choose_tokenizer(spec, config.tokenizer, probes, calibration)


def _write_tokenizer(spec: CheckpointSpec, tokenizer, stage: Path) -> TokenizerEntry:
    """Write the tokenizer's backend as `tokenizer.json` and describe how to call it."""
    (stage / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    return tokenizer_entry(spec, tokenizer)


@dataclass
class _Fp32Graphs:
    folder: Path
    encoder_inputs: list[str]
    heads: dict[str, HeadEntry]


def _export_fp32(spec: CheckpointSpec, tokenizer_outputs: list[str], folder: Path, opset: int,
                 done: Callable[[str], None]) -> _Fp32Graphs:
    """Export the encoder, the pooling and every head as fp32 graphs into `folder`."""
    encoder = spec.transformer.build(tokenizer_outputs)
    graphs.export_encoder(encoder, folder / graphs.ENCODER_FILE, opset)
    done(graphs.ENCODER_FILE)
    graphs.export_pooling(spec.pooling.build(), spec.transformer.hidden_size, folder / graphs.POOLING_FILE, opset)
    done(graphs.POOLING_FILE)
    pooled_dim = spec.pooling.output_dimension
    heads = {}
    files = graphs.head_files(spec.heads)  # route names are data: never a path
    for name, head in spec.heads.items():
        graphs.export_head(head.build(), pooled_dim, folder / files[name], opset)
        heads[name] = HeadEntry(file=files[name], dimension=head.output_dimension(pooled_dim),
                                modules=[m.describe() for m in head.modules])
        done(files[name])
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


@dataclass
class _Trimming:
    """`--keep-vocabulary`: the trimmed vocabulary, its tokenizer and its manifest record."""

    vocabulary: Any  # vocabulary.TrimmedVocabulary
    tokenizer: Any  # a transformers tokenizer over the trimmed tokenizer.json
    record: dict[str, Any]
    corpus: list[str]

    def covered(self, texts: list[str], original) -> list[int]:
        """Indices of the texts that the trimmed tokenizer splits exactly as the full one
        (remapped): those whose pieces were all kept. Validation compares on these."""
        alike = self.vocabulary.alike(original.backend_tokenizer, self.tokenizer.backend_tokenizer,
                                      [text.strip() for text in texts])
        return [i for i, ok in enumerate(alike) if ok]


def _trim_vocabulary(corpus: Path, hf_tokenizer, spec: CheckpointSpec) -> _Trimming:
    """The vocabulary that the texts of `corpus` (one per line) need, with and without each prompt."""
    from transformers import PreTrainedTokenizerFast

    from .vocabulary import trim

    lines = read_texts(corpus, "--keep-vocabulary")
    # The runtime prepends a prompt to the text: a prompted text is tokenized as one string.
    texts = [*lines, *(prompt + line for prompt in spec.prompts.texts.values() for line in lines)]
    # Position ids of RoBERTa-like encoders are computed in the graph by comparing ids with the pad id.
    vocabulary = trim(hf_tokenizer.backend_tokenizer.to_str(), texts, fixed_ids=[int(hf_tokenizer.pad_token_id)])
    special = {k: v for k, v in hf_tokenizer.special_tokens_map.items() if isinstance(v, str)}
    trimmed = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(vocabulary.tokenizer_json),
                                      model_input_names=hf_tokenizer.model_input_names,
                                      model_max_length=spec.transformer.max_seq_length, **special)
    record = vocabulary.to_manifest(len(lines), sha256_of(corpus))
    return _Trimming(vocabulary, trimmed, record, lines)


def _trim_artifact(stage: Path, trimming: _Trimming, spec: CheckpointSpec, encoder_info: dict) -> TokenizerEntry:
    """Trim the staged artifact, whose plan was chosen on the full vocabulary: the encoder's token
    tables keep the kept rows (int8 calibrated on the full vocabulary, so a corpus text gets the
    untrimmed artifact's numbers), and the trimmed tokenizer replaces the full one."""
    import onnx

    from .vocabulary import trim_embedding_table

    encoder = stage / graphs.ENCODER_FILE
    model = onnx.load(str(encoder))
    trim_embedding_table(model, trimming.vocabulary)
    save_graph(model, encoder, external_weights=True)
    encoder_info["vocabulary"] = trimming.record
    return _write_tokenizer(spec, trimming.tokenizer, stage)


def _place(fp32: Path, stage: Path, rel: str, transform: Fp16Options | Int8Options | None,
           calibration: Iterable[dict[str, np.ndarray]] = (), external_weights: bool = False) -> dict:
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


def _reference(model_dir: Path, probes: list[str], spec: CheckpointSpec) -> dict[str, np.ndarray]:
    """sentence-transformers' embeddings of the probes, for every head; a model it cannot load
    (e.g. a route name with a dot, which torch refuses) is a `CheckpointError`."""
    try:
        return reference_embeddings(model_dir, probes, list(spec.heads), routed=spec.router_kind is not None)
    except Exception as exc:  # whatever fails inside sentence-transformers; chained, so --debug shows it
        raise CheckpointError(
            f"{model_dir}: sentence-transformers cannot run this model, so the export cannot be validated "
            f"({type(exc).__name__}: {exc}). Fix the checkpoint, or pass --no-validate to export it unchecked."
        ) from exc


def export_model(config: ExportConfig) -> Path:
    """Export `config.model` to an artifact folder at `config.output` and return its path.

    Nothing is written at `config.output` unless every step, validation included, succeeds.
    """
    local = Path(config.model).expanduser()
    check_target(config.output, config.overwrite, local if local.is_dir() else None)  # before any download
    source = resolve_source(config.model, config.revision)
    spec = read_checkpoint(source.path, allow_pickle=config.allow_pickle)
    # The tokenizer check compares on the calibration texts at every precision; only int8 calibrates.
    texts = read_texts(config.calibration) if config.calibration else builtin_texts()
    probes = probe_texts()
    hf_tokenizer, tokenizer_check = _load_tokenizer(spec, config, probes, texts)
    calibration_texts = texts if config.precision == "int8" else None
    if config.validate:  # with the checkpoint's tokenizer: the probes sentence-transformers tokenizes alike
        probes = tokenizer_check.validation_probes(probes)
    trimming = covered = None
    if config.keep_vocabulary is not None:
        trimming = _trim_vocabulary(config.keep_vocabulary, hf_tokenizer, spec)
        # The plans are validated on the full vocabulary with every probe (the same choice as an
        # untrimmed export); the trimmed artifact then on the corpus texts and the probes whose
        # pieces were all kept (texts outside the corpus may split otherwise, by design).
        probes = list(dict.fromkeys([*probes, *trimming.corpus[::max(1, len(trimming.corpus) // 32)][:32]]))
        covered = trimming.covered(probes, hf_tokenizer)
        if not covered:
            raise ValueError(f"{config.keep_vocabulary}: no validation text is covered by the kept vocabulary")
    steps = 3 + len(spec.heads) + 2 * config.validate
    with tqdm(total=steps, desc="export", unit="step", disable=not config.show_progress) as progress:

        def done(stage: str) -> None:
            progress.set_postfix_str(stage)
            progress.update()

        reference = None
        if config.validate:
            reference = _reference(source.path, probes, spec)
            done("sentence-transformers reference")

        with staged_folder(config.output, config.overwrite, source.path) as staging:
            stage = staging.artifact
            fp32 = _export_fp32(spec, hf_tokenizer.model_input_names, staging.scratch, config.opset, done)
            encoder_transform, head_transform = graph_transforms(config.precision)
            encoder_transform = config.int8 or encoder_transform
            fusion = None
            if isinstance(encoder_transform, Int8Options):  # fewer nodes around the int8 matmuls
                fusion = fuse_encoder_file(fp32.folder / graphs.ENCODER_FILE, spec.transformer.num_heads,
                                           spec.transformer.hidden_size)
            feeds = Calibration(_calibration_feeds(calibration_texts, hf_tokenizer, spec, fp32.encoder_inputs)
                                if calibration_texts else [], scratch=staging.scratch)
            pooling_info = _place(fp32.folder, stage, graphs.POOLING_FILE, None)
            for entry in fp32.heads.values():
                entry.transform = _place(fp32.folder, stage, entry.file, head_transform)
            tokenizer = _write_tokenizer(spec, hf_tokenizer, stage)

            def rank() -> list[str]:
                import onnx

                from .sensitivity import rank_matmuls

                progress.total += len(int8_plans.FALLBACK_COUNTS) + 1
                texts = int8_plans.sensitivity_texts(calibration_texts)
                scored = _calibration_feeds(texts, hf_tokenizer, spec, fp32.encoder_inputs, batch_size=64)
                ranking = rank_matmuls(encoder_transform, onnx.load(str(fp32.folder / graphs.ENCODER_FILE)), feeds,
                                       scored, onnx.load(str(fp32.folder / graphs.POOLING_FILE)), staging.scratch)
                done("int8 sensitivity ranking")
                return ranking.ranked

            laddered = isinstance(encoder_transform, Int8Options) and reference is not None
            plans = int8_plans.int8_plans(encoder_transform, rank) if laddered else [encoder_transform]
            attempts: list[dict] = []
            for plan in plans:
                encoder_info = _place(fp32.folder, stage, graphs.ENCODER_FILE, plan, feeds, external_weights=True)
                if fusion is not None:
                    encoder_info["fusion"] = fusion
                if calibration_texts:
                    encoder_info["calibration_texts"] = str(config.calibration) if config.calibration else "built-in"
                done(f"{config.precision} graphs and tokenizer" if not attempts else f"int8 plan {len(attempts) + 1}")
                manifest = Manifest(
                    source=source.to_manifest(),
                    versions=_versions(),
                    opset=config.opset,
                    precision=config.precision,
                    tokenizer=tokenizer,
                    encoder=EncoderEntry(file=graphs.ENCODER_FILE, input_names=fp32.encoder_inputs,
                                        hidden_size=spec.transformer.hidden_size, transform=encoder_info),
                    pooling=PoolingEntry(file=graphs.POOLING_FILE, modes=spec.pooling.modes,
                                         dimension=spec.pooling.output_dimension, transform=pooling_info,
                                         include_prompt=spec.pooling.include_prompt),
                    heads=fp32.heads,
                    default_head=spec.default_head,
                    validation={"performed": False, "reason": "--no-validate: the reference stack was not run"},
                    tokenizer_check=tokenizer_check.to_manifest(),
                    prompts=spec.prompts.texts,
                    default_prompt_name=spec.prompts.default_name,
                )
                manifest.record_files(stage)
                manifest.save(stage)
                if reference is None:
                    break
                results = validate_artifact(stage, probes, reference)
                worst = min(r.min_cosine for r in results.values())
                if laddered:
                    attempts.append({"fp32_matmuls": len(plan.fp32_matmuls), "min_cosine": round(worst, 7)})
                if worst >= config.threshold + config.target_margin:
                    break
            if trimming is not None:
                manifest.tokenizer = _trim_artifact(stage, trimming, spec, encoder_info)
                manifest.record_files(stage)
                manifest.save(stage)
                if reference is not None:
                    probes = [probes[i] for i in covered]
                    reference = {head: vectors[covered] for head, vectors in reference.items()}
                    results = validate_artifact(stage, probes, reference)
            if reference is not None:
                manifest.validation = {
                    "performed": True,
                    "reference": "sentence-transformers on PyTorch (fp32, CPU)",
                    "probe_count": len(probes),
                    "min_cosine_threshold": config.threshold,
                    "heads": {head: r.to_dict() for head, r in results.items()},
                }
                if attempts:
                    encoder_info["plan"] = int8_plans.describe(attempts, config.threshold, config.target_margin)
                manifest.save(stage)  # the manifest is not in its own file list, so checksums still hold
                done("validation")
                check_thresholds(results, config.threshold, config.precision)
    return config.output
