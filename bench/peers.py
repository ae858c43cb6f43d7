"""The libraries users would pick instead of this project, prepared for the benchmarks.

* `st-onnx`: sentence-transformers' ONNX backend, as its docs recommend:
  `SentenceTransformer(path, backend="onnx")` exports the Transformer with optimum (fp32) and
  `model.save_pretrained(path)` keeps it; `export_dynamic_quantized_onnx_model(model,
  "avx512_vnni", path)` writes its int8 graph (onnxruntime dynamic quantization: uint8
  activations with one scale per tensor, int8 per-channel weights). The "avx2" config (uint8
  weights) is measured on real weights only.
* `fastembed`: `TextEmbedding.add_custom_model(...)`, mean pooling, no normalization, on this
  project's fp32 `encoder.onnx` (input ids and mask in, token embeddings out: the first output,
  which is what fastembed pools). Its int8 is onnxruntime's `quantize_dynamic` of that graph with
  the settings of sentence-transformers' avx512_vnni config.
* `openvino`: OpenVINO, which sentence-transformers' docs recommend on CPUs, on this project's fp32
  `encoder.onnx` converted to an OpenVINO IR (`openvino.convert_model`, weights kept fp32) and
  compiled for "CPU" at OpenVINO's defaults: on a CPU with AMX or AVX512-BF16 that means bf16
  inference, and the worker reports the `INFERENCE_PRECISION_HINT` it got. Its int8 is NNCF's
  post-training quantization of that IR (`nncf.quantize(..., model_type=TRANSFORMER,
  subset_size=300)`), calibrated on 300 of this project's built-in calibration texts
  (`jobbert_onnx.export.calibration.builtin_texts()`, evenly spaced, so every language and the skill
  lists are in). Texts are tokenized with the artifact's `tokenizer.json` (the one this project's
  runtime uses), saved with the artifact's truncation, lower-casing and padding, so that the
  calibration feeds and the benchmark feeds come from one function (`bench.worker.openvino_feeds`).

None has a Dense head (JobBERT-v3's Asym): each embeds the pooled vector, so each gets the model
without the modules after Pooling (`pooled_model`), and their cosine is taken against PyTorch's
output for that same folder. Each peer runs in its own venv (`make peer-venvs`):
`sentence-transformers[onnx]` needs optimum-onnx, which pins transformers < 4.58 while this
project needs transformers 5; fastembed and openvino need no torch. Preparing the int8 graph for
fastembed runs here, in the project's venv, which has `onnx`.

`python -m bench.peers st-export FOLDER` is the step that runs in the sentence-transformers venv,
`python -m bench.peers openvino-build FOLDER --onnx ENCODER` the one that runs in the openvino venv
(this project is not installed there: the caller writes the tokenizer and the calibration texts
into FOLDER first, `openvino_folder`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("st", "fastembed", "openvino")
VENVS = {"st": ROOT / ".venv-peer-st", "fastembed": ROOT / ".venv-peer-fastembed",
         "openvino": ROOT / ".venv-peer-openvino"}
PACKAGES = {
    "st": ("sentence-transformers", "optimum", "optimum-onnx", "transformers", "torch", "onnxruntime", "tokenizers"),
    "fastembed": ("fastembed", "onnxruntime", "tokenizers", "numpy"),
    "openvino": ("openvino", "nncf", "tokenizers", "numpy"),
}
ST_FP32_FILE = "onnx/model.onnx"
ST_INT8_CONFIGS = ("avx512_vnni", "avx2")


def st_int8_file(config: str) -> str:
    """Where `export_dynamic_quantized_onnx_model` writes the `config` graph (int8 or uint8 weights)."""
    return f"onnx/model_{'quint8' if config == 'avx2' else 'qint8'}_{config}.onnx"


# The fp32 graph keeps its name: its external data file is named after it (encoder.onnx.data).
FASTEMBED_FP32_FILE = "encoder.onnx"
FASTEMBED_INT8_FILE = "encoder_qint8.onnx"
# OpenVINO IRs: model.xml (the graph) beside model.bin (the weights), one folder per precision.
OPENVINO_FP32_FILE = "fp32/model.xml"
OPENVINO_INT8_FILE = "int8/model.xml"
# The openvino folder's tokenizer (truncation, lower-casing and padding saved in it), its settings
# (whether texts are stripped) and NNCF's calibration texts.
OPENVINO_TOKENIZER = "tokenizer.json"
OPENVINO_SETTINGS = "tokenization.json"
OPENVINO_CALIBRATION = "calibration.json"
OPENVINO_SUBSET_SIZE = 300


class PeerError(RuntimeError):
    """A peer's venv is missing or a peer could not be prepared."""


def _log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def peer_python(peer: str) -> Path:
    """The python of `peer`'s venv; a `PeerError` saying how to build it when it is missing."""
    python = VENVS[peer] / "bin" / "python"
    if not python.exists():
        raise PeerError(f"peer {peer!r}: {python} is missing; build it with `make peer-venvs`, "
                        f"or run without it (--peers none).")
    return python


def peer_versions(peer: str) -> dict[str, str]:
    """The versions of `peer`'s packages, read in its own venv."""
    code = ("import json, importlib.metadata as m\n"
            "def v(n):\n  try: return m.version(n)\n  except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{n: v(n) for n in {list(PACKAGES[peer])!r}}}))")
    output = subprocess.run([str(peer_python(peer)), "-c", code], capture_output=True, text=True, check=True).stdout
    return {name: version for name, version in json.loads(output).items() if version}


# -- model folders ------------------------------------------------------------------------------
def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link a large read-only file (nothing here writes weights), else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def pooled_model(model: Path, out: Path) -> Path:
    """Write into `out` a sentence-transformers folder with `model`'s Transformer and Pooling
    modules only: what the peers embed. Dense, Asym, Router and Normalize modules after Pooling
    are dropped (Normalize changes no cosine). Small files are copied, since the peers' tools
    rewrite them; `*.safetensors` weights are hard-linked. `model` is never written."""
    model, out = Path(model), Path(out)
    modules = json.loads((model / "modules.json").read_text(encoding="utf-8"))
    kinds = [entry["type"].rsplit(".", 1)[-1] for entry in modules]
    if "Pooling" not in kinds:
        raise PeerError(f"{model}: modules.json has no Pooling module; the peers need Transformer + Pooling.")
    kept = modules[: kinds.index("Pooling") + 1]
    dropped = {entry["path"] for entry in modules[len(kept):] if entry["path"]}
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for entry in model.iterdir():
        if entry.name in dropped or entry.name in ("modules.json", "onnx") or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        elif entry.suffix == ".safetensors":
            _link_or_copy(entry, staging / entry.name)
        else:
            shutil.copy2(entry, staging / entry.name)
    (staging / "modules.json").write_text(json.dumps(kept, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def fastembed_folder(model: Path, artifact: Path, out: Path) -> Path:
    """Write into `out` the folder fastembed loads as a custom model: this project's fp32
    `encoder.onnx` and its `.data`, and `model`'s tokenizer and
    config files. `model_max_length` is set to the model's `max_seq_length`, where
    sentence-transformers truncates; fastembed truncates at `model_max_length`."""
    model, artifact, out = Path(model), Path(artifact), Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "special_tokens_map.json"):
        shutil.copy2(model / name, staging / name)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    st_config = model / "sentence_bert_config.json"
    st_settings = json.loads(st_config.read_text(encoding="utf-8")) if st_config.exists() else {}
    if max_seq_length := st_settings.get("max_seq_length"):
        tokenizer_config["model_max_length"] = max_seq_length
    (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    # Copies, not links: onnx refuses external data with several hard links ("hardlink attack").
    for graph in artifact.glob("encoder.onnx*"):
        shutil.copy2(graph, staging / graph.name)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def calibration_texts(count: int = OPENVINO_SUBSET_SIZE) -> list[str]:
    """`count` of this project's built-in calibration texts, evenly spaced over the list (it is
    ordered by language, with the skill lists last), so that each language and some skill lists
    are in; all of them when there are not more than `count`."""
    from jobbert_onnx.export.calibration import builtin_texts

    texts = builtin_texts()
    if len(texts) <= count:
        return texts
    return [texts[i * len(texts) // count] for i in range(count)]


def openvino_folder(artifact: Path, out: Path, texts: list[str]) -> Path:
    """Write into `out` what `openvino-build` needs besides the ONNX graph: the artifact's
    `tokenizer.json` configured as this project's runtime uses it (lower-casing when the model
    asks, truncation to `max_seq_length` counting the special tokens, right padding to the longest
    text with the artifact's pad token) and saved that way, `tokenization.json` (whether texts are
    stripped first), and the calibration `texts`. Runs in the project's venv."""
    from tokenizers import Tokenizer

    from jobbert_onnx.runtime.manifest import Manifest
    from jobbert_onnx.runtime.tokenization import TextTokenizer

    artifact, out = Path(artifact), Path(out)
    manifest = Manifest.load(artifact)
    spec = manifest.tokenizer
    tokenizer = Tokenizer.from_file(str(artifact / spec.file))
    TextTokenizer(tokenizer, spec)  # sets the lower-casing and the truncation on `tokenizer` itself
    tokenizer.enable_padding(direction="right", pad_id=spec.pad_token_id, pad_type_id=0, pad_token=spec.pad_token)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer.save(str(staging / OPENVINO_TOKENIZER))
    settings = {"strip": spec.strip, "max_seq_length": spec.max_seq_length, "do_lower_case": spec.do_lower_case,
                "encoder_inputs": list(manifest.encoder.input_names)}
    (staging / OPENVINO_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (staging / OPENVINO_CALIBRATION).write_text(json.dumps(texts, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def openvino_build(folder: Path, onnx: Path, subset_size: int = OPENVINO_SUBSET_SIZE) -> None:
    """Run in the openvino venv: convert `onnx` (this project's fp32 encoder) to the fp32 IR
    `folder/fp32/model.xml` (weights kept fp32: `save_model` would store them as fp16 by default),
    then quantize that IR with NNCF, calibrated on `folder/calibration.json`'s texts one at a time,
    tokenized by the worker's own `openvino_feeds`, into `folder/int8/model.xml`."""
    import nncf
    import openvino as ov
    from tokenizers import Tokenizer

    from bench.worker import openvino_feeds

    folder = Path(folder)
    model = ov.convert_model(str(onnx))
    ov.save_model(model, str(folder / OPENVINO_FP32_FILE), compress_to_fp16=False)
    tokenizer = Tokenizer.from_file(str(folder / OPENVINO_TOKENIZER))
    strip = json.loads((folder / OPENVINO_SETTINGS).read_text(encoding="utf-8"))["strip"]
    texts = json.loads((folder / OPENVINO_CALIBRATION).read_text(encoding="utf-8"))
    names = {port.get_any_name() for port in model.inputs}
    dataset = nncf.Dataset(texts, lambda text: openvino_feeds(tokenizer, strip, [text], names))
    quantized = nncf.quantize(ov.Core().read_model(str(folder / OPENVINO_FP32_FILE)), dataset,
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=subset_size)
    ov.save_model(quantized, str(folder / OPENVINO_INT8_FILE), compress_to_fp16=False)


def quantize_like_st(source: Path, target: Path) -> None:
    """onnxruntime's `quantize_dynamic` with sentence-transformers' avx512_vnni settings: int8
    symmetric per-channel weights, uint8 activations with one dynamic scale per tensor, full range."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=False)


def st_export(folder: Path, int8_configs: tuple[str, ...] = ST_INT8_CONFIGS[:1]) -> None:
    """Run in the sentence-transformers venv: export `folder` as sentence-transformers' docs
    recommend, fp32 to `onnx/model.onnx` and each int8 config to `st_int8_file(config)`."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    model = SentenceTransformer(str(folder), device="cpu", backend="onnx", local_files_only=True)
    model.save_pretrained(str(folder))
    for config in int8_configs:
        export_dynamic_quantized_onnx_model(model, config, str(folder))


# -- preparing a model for the peers, cached -----------------------------------------------------
def _stamp(*parts: object) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cached(folder: Path, key: str, build) -> Path:
    """`build()` into `folder` unless a build with the same `key` is there."""
    stamp = folder.with_name(folder.name + ".key")
    if not (folder.exists() and stamp.exists() and stamp.read_text() == key):
        build()
        stamp.write_text(key)
    return folder


def prepare(peers: tuple[str, ...], name: str, model: Path, fp32_artifact: Path | None, cache: Path,
            st_int8_configs: tuple[str, ...] = ST_INT8_CONFIGS[:1]) -> dict[str, Path]:
    """Build what `peers` need for `model` in `cache/peers/`: `pooled` (the PyTorch reference
    folder), `st` (pooled + the ONNX backend's graphs), `fastembed` and `openvino` (both from
    `fp32_artifact`). Each is rebuilt only when its inputs change."""
    root = Path(cache) / "peers"
    root.mkdir(parents=True, exist_ok=True)
    source = {"model": str(Path(model).resolve()), "files": sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(model).iterdir() if p.is_file())}
    folders = {"pooled": _cached(root / f"{name}-pooled", _stamp(source),
                                 lambda: pooled_model(model, root / f"{name}-pooled"))}
    if "st" in peers:
        def build_st() -> None:
            _log(f"{name}: exporting with sentence-transformers' ONNX backend ({', '.join(st_int8_configs)})")
            pooled_model(model, root / f"{name}-st")
            subprocess.run([str(peer_python("st")), "-m", "bench.peers", "st-export", str(root / f"{name}-st"),
                            "--int8", *st_int8_configs], cwd=ROOT, check=True,
                           env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))

        folders["st"] = _cached(root / f"{name}-st", _stamp(source, peer_versions("st"), st_int8_configs), build_st)
    for peer in ("fastembed", "openvino"):
        if peer in peers and fp32_artifact is None:
            raise PeerError(f"{name}: {peer} needs this project's fp32 artifact (its encoder.onnx).")
    artifact_key = (Path(fp32_artifact) / "manifest.json").read_text(encoding="utf-8") if fp32_artifact else None
    if "fastembed" in peers:

        def build_fastembed() -> None:
            _log(f"{name}: fastembed folder, and quantize_dynamic for its int8")
            folder = fastembed_folder(model, fp32_artifact, root / f"{name}-fastembed")
            quantize_like_st(folder / FASTEMBED_FP32_FILE, folder / FASTEMBED_INT8_FILE)

        folders["fastembed"] = _cached(root / f"{name}-fastembed", _stamp(source, artifact_key), build_fastembed)
    if "openvino" in peers:
        texts = calibration_texts()

        def build_openvino() -> None:
            _log(f"{name}: OpenVINO IR of our fp32 encoder.onnx, and NNCF's int8 of it ({len(texts)} texts)")
            folder = openvino_folder(fp32_artifact, root / f"{name}-openvino", texts)
            subprocess.run([str(peer_python("openvino")), "-m", "bench.peers", "openvino-build", str(folder),
                            "--onnx", str(Path(fp32_artifact).resolve() / "encoder.onnx")], cwd=ROOT, check=True,
                           env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))

        # The worker's source too: its `openvino_feeds` tokenizes the calibration texts.
        worker_source = (ROOT / "bench" / "worker.py").read_text(encoding="utf-8")
        folders["openvino"] = _cached(root / f"{name}-openvino", _stamp(
            artifact_key, texts, worker_source, peer_versions("openvino")), build_openvino)
    return folders


def variants(peers: tuple[str, ...], folders: dict[str, Path], st_int8_configs=ST_INT8_CONFIGS[:1]) -> dict:
    """`{name: (kind, folder, python, file)}` for each peer variant, fp32 and int8."""
    table = {}
    if "st" in peers:
        python = peer_python("st")
        table["st-onnx-fp32"] = ("st-onnx", folders["st"], python, ST_FP32_FILE)
        for config in st_int8_configs:
            suffix = "" if config == "avx512_vnni" else f"-{config}"
            table[f"st-onnx-int8{suffix}"] = ("st-onnx", folders["st"], python, st_int8_file(config))
    if "fastembed" in peers:
        python = peer_python("fastembed")
        table["fastembed-fp32"] = ("fastembed", folders["fastembed"], python, FASTEMBED_FP32_FILE)
        table["fastembed-int8"] = ("fastembed", folders["fastembed"], python, FASTEMBED_INT8_FILE)
    if "openvino" in peers:
        python = peer_python("openvino")
        table["openvino-fp32"] = ("openvino", folders["openvino"], python, OPENVINO_FP32_FILE)
        table["openvino-int8"] = ("openvino", folders["openvino"], python, OPENVINO_INT8_FILE)
    return table


def selected(choice: str) -> tuple[str, ...]:
    """The `--peers` choice as a tuple of peers."""
    return {"none": (), "all": PEERS}.get(choice, (choice,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Peer preparation steps that run in a peer's own venv.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("st-export", help="in the sentence-transformers venv: export FOLDER with its ONNX backend")
    export.add_argument("folder", type=Path)
    export.add_argument("--int8", nargs="*", default=list(ST_INT8_CONFIGS[:1]), choices=ST_INT8_CONFIGS)
    build = sub.add_parser("openvino-build", help="in the openvino venv: FOLDER/fp32 IR from --onnx, and NNCF's "
                                                  "int8 of it calibrated on FOLDER/calibration.json")
    build.add_argument("folder", type=Path, help="written by `openvino_folder` (tokenizer, calibration texts)")
    build.add_argument("--onnx", type=Path, required=True, help="this project's fp32 encoder.onnx")
    build.add_argument("--subset-size", type=int, default=OPENVINO_SUBSET_SIZE)
    args = parser.parse_args(argv)
    if args.command == "st-export":
        st_export(args.folder, tuple(args.int8))
    else:
        openvino_build(args.folder, args.onnx, args.subset_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
