"""The artifact's `manifest.json`: its schema, reading, writing and checksum verification.

The exporter builds a `Manifest` and writes it; the runtime reads and verifies it. This module
only needs the standard library, so that both sides share one definition of the format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FileEntry:
    size: int
    sha256: str


@dataclass
class TokenizerSpec:
    """How texts become token ids, exactly as sentence-transformers does it."""

    file: str
    max_seq_length: int
    do_lower_case: bool
    pad_token_id: int
    pad_token: str
    strip: bool = True


@dataclass
class EncoderSpec:
    file: str
    input_names: list[str]
    hidden_size: int
    transform: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolingSpec:
    file: str
    modes: list[str]
    dimension: int
    transform: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadEntry:
    file: str
    dimension: int
    modules: list[str]
    transform: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """Everything the runtime needs to know about an artifact folder.

    `transform` entries record how each graph was cast or quantized; `validation` holds the
    export-time parity figures (or why validation was skipped); `tokenizer_check` says which
    tokenizer was chosen and where it disagrees with the other candidate (empty in older manifests).
    """

    source: dict[str, Any]
    versions: dict[str, str]
    opset: int
    precision: str
    tokenizer: TokenizerSpec
    encoder: EncoderSpec
    pooling: PoolingSpec
    heads: dict[str, HeadEntry]
    default_head: str
    validation: dict[str, Any]
    tokenizer_check: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # -- writing -------------------------------------------------------------------------
    def graph_files(self) -> list[str]:
        """Relative paths of every ONNX graph, encoder first."""
        return [self.encoder.file, self.pooling.file, *(h.file for h in self.heads.values())]

    def record_files(self, folder: Path) -> None:
        """Fill `files` with the size and sha256 of every file in `folder` but the manifest."""
        self.files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                self.files[rel] = FileEntry(size=path.stat().st_size, sha256=sha256_of(path))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # format_version first makes the file self-describing when read by a person.
        return {"format_version": data.pop("format_version"), **data}

    def save(self, folder: Path) -> Path:
        """Write `manifest.json` into `folder`."""
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = MANIFEST_NAME) -> "Manifest":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{origin}: unknown format version {version!r}; this jobbert-onnx reads version "
                f"{FORMAT_VERSION}. Re-export the model with this version, or install the matching one."
            )
        try:
            return cls(
                format_version=version,
                source=data["source"],
                versions=data["versions"],
                opset=int(data["opset"]),
                precision=data["precision"],
                tokenizer=TokenizerSpec(**data["tokenizer"]),
                encoder=EncoderSpec(**data["encoder"]),
                pooling=PoolingSpec(**data["pooling"]),
                heads={name: HeadEntry(**entry) for name, entry in data["heads"].items()},
                default_head=data["default_head"],
                validation=data["validation"],
                tokenizer_check=data.get("tokenizer_check", {}),
                files={name: FileEntry(**entry) for name, entry in data["files"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{origin}: malformed manifest ({type(exc).__name__}: {exc}).") from exc

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        """Read `manifest.json` from an artifact folder (no checksum verification)."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: not an artifact folder (it does not exist or is not a directory).")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; {folder} is not a complete jobbert-onnx artifact.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc}).") from exc
        if not isinstance(data, dict):
            raise ArtifactError(f"{path}: malformed manifest (not a JSON object).")
        return cls.from_dict(data, origin=str(path))

    def verify_files(self, folder: str | Path) -> None:
        """Check that every listed file exists with its recorded size and sha256.

        Raises `ArtifactError` naming the first file that is missing or differs.
        """
        folder = Path(folder)
        referenced = {self.tokenizer.file, *self.graph_files()}
        unlisted = sorted(referenced - set(self.files))
        if unlisted:
            raise ArtifactError(f"{folder / unlisted[0]}: used by the artifact but not listed in {MANIFEST_NAME}.")
        for rel, entry in self.files.items():
            path = folder / rel
            if not path.is_file():
                raise ArtifactError(f"{path}: missing from the artifact.")
            size = path.stat().st_size
            if size != entry.size:
                raise ArtifactError(f"{path}: size {size} does not match the manifest ({entry.size}); the file is damaged.")
            if sha256_of(path) != entry.sha256:
                raise ArtifactError(f"{path}: sha256 does not match the manifest; the file is damaged or was changed.")
