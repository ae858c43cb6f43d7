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

Neither has a Dense head (JobBERT-v3's Asym): both embed the pooled vector, so both get the model
without the modules after Pooling (`pooled_model`), and their cosine is taken against PyTorch's
output for that same folder. Each peer runs in its own venv (`make peer-venvs`):
`sentence-transformers[onnx]` needs optimum-onnx, which pins transformers < 4.58 while this
project needs transformers 5; fastembed needs no torch. Preparing the int8 graph for fastembed
runs here, in the project's venv, which has `onnx`.

`python -m bench.peers st-export FOLDER` is the step that runs in the sentence-transformers venv.
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
PEERS = ("st", "fastembed")
VENVS = {"st": ROOT / ".venv-peer-st", "fastembed": ROOT / ".venv-peer-fastembed"}
PACKAGES = {
    "st": ("sentence-transformers", "optimum", "optimum-onnx", "transformers", "torch", "onnxruntime", "tokenizers"),
    "fastembed": ("fastembed", "onnxruntime", "tokenizers", "numpy"),
}
ST_FP32_FILE = "onnx/model.onnx"
ST_INT8_CONFIGS = ("avx512_vnni", "avx2")


def st_int8_file(config: str) -> str:
    """Where `export_dynamic_quantized_onnx_model` writes the `config` graph (int8 or uint8 weights)."""
    return f"onnx/model_{'quint8' if config == 'avx2' else 'qint8'}_{config}.onnx"


# The fp32 graph keeps its name: its external data file is named after it (encoder.onnx.data).
FASTEMBED_FP32_FILE = "encoder.onnx"
FASTEMBED_INT8_FILE = "encoder_qint8.onnx"


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
    folder), `st` (pooled + the ONNX backend's graphs) and `fastembed` (from `fp32_artifact`).
    Each is rebuilt only when its inputs change."""
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
    if "fastembed" in peers:
        if fp32_artifact is None:
            raise PeerError(f"{name}: fastembed needs this project's fp32 artifact (its encoder.onnx).")
        artifact_key = (Path(fp32_artifact) / "manifest.json").read_text(encoding="utf-8")

        def build_fastembed() -> None:
            _log(f"{name}: fastembed folder, and quantize_dynamic for its int8")
            folder = fastembed_folder(model, fp32_artifact, root / f"{name}-fastembed")
            quantize_like_st(folder / FASTEMBED_FP32_FILE, folder / FASTEMBED_INT8_FILE)

        folders["fastembed"] = _cached(root / f"{name}-fastembed", _stamp(source, artifact_key), build_fastembed)
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
    args = parser.parse_args(argv)
    st_export(args.folder, tuple(args.int8))
    return 0


if __name__ == "__main__":
    sys.exit(main())
