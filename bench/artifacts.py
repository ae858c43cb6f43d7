"""Exported artifacts for the benchmarks, cached by the exporter's code, the model and the tool versions."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "fp16", "int8")


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _model_fingerprint(model: Path) -> bytes:
    """The reference model's recipe stamp; for any other folder, its files' names, sizes and times."""
    stamp = model / ".reference-model.json"
    if stamp.exists():
        return stamp.read_bytes()
    files = sorted((str(p.relative_to(model)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in model.rglob("*") if p.is_file())
    return json.dumps([str(model.resolve()), files]).encode()


def _exporter_key(model: Path, precision: str) -> str:
    """Changes whenever the exporter's code, the model or the tool versions change."""
    digest = hashlib.sha256()
    for source in sorted((HERE.parent / "export").glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(_model_fingerprint(Path(model)))
    for name in ("torch", "onnx", "onnxruntime", "transformers", "sentence-transformers"):
        digest.update(metadata.version(name).encode())
    digest.update(precision.encode())
    return digest.hexdigest()


def prepare_artifacts(model: Path, cache: Path, precisions=PRECISIONS, name: str = "reference",
                      reuse: bool = False) -> dict[str, Path]:
    """Export `model` at each precision into `cache` as `{name}-{precision}`, reusing an export
    made by the same code, or with `reuse` any complete cached export (for runs after changes
    that leave the graphs alone; the caller says so in its results)."""
    from jobbert_onnx.export import ExportConfig, export_model

    artifacts = {}
    for precision in precisions:
        folder = cache / f"{name}-{precision}"
        stamp = cache / f"{name}-{precision}.key"
        key = _exporter_key(model, precision)
        if reuse and (folder / "manifest.json").is_file() and stamp.exists():
            _log(f"reusing {folder} (--reuse: exported by earlier code)")
        elif not (folder.exists() and stamp.exists() and stamp.read_text() == key):
            _log(f"exporting {name} at {precision}")
            start = time.perf_counter()
            export_model(ExportConfig(model=str(model), output=folder, precision=precision, overwrite=True,
                                      show_progress=False))
            stamp.write_text(key)
            _log(f"  {precision} exported in {time.perf_counter() - start:.0f} s")
        artifacts[precision] = folder
    return artifacts


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6, 1)


def graph_mb(folder: Path, file: str) -> float:
    """Size of one model file in `folder` with its weights (MB): an ONNX graph and its external
    data, or an OpenVINO IR's `.xml` and `.bin`."""
    path = Path(folder) / file
    names = [path.name + "*"] + ([path.with_suffix(".bin").name] if path.suffix == ".xml" else [])
    return round(sum(f.stat().st_size for name in names for f in path.parent.glob(name) if f.is_file()) / 1e6, 1)
