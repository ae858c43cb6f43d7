"""The artifact's `manifest.json`: its schema, reading, writing and checksum verification.

The exporter builds a `Manifest` and writes it; the runtime reads and verifies it. This module
only needs the standard library, so that both sides share one definition of the format.

Reading trusts nothing in the folder. `Manifest.from_dict` checks every field's type and range,
and that every path it names is a plain relative path, before anything touches the file system;
`verify_files` then checks that the folder holds exactly the listed files, as regular files with
their recorded size and sha256. Every failure is an `ArtifactError` naming the manifest (or the
file) and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .errors import ArtifactError

# Version 2 added the prompt fields (`prompts`, `default_prompt_name`, `pooling.include_prompt`):
# a runtime that reads only version 1 then says "unknown format version" rather than failing on
# a field it does not know. Version 1 manifests still load, with no prompts.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
# What the runtime's tokenizer gives an encoder.
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Encoders hold 512 (BERT, XLM-R) to about 131,072 (long-context models) positions, and widths of a
# few thousand: a million is far above any real model, yet keeps what the runtime derives from these
# numbers (the character cut before tokenizing, output arrays) bounded and free of overflow.
SEQ_LENGTH_LIMIT = 1_000_000
WIDTH_LIMIT = 1_000_000
_MAX_MANIFEST_BYTES = 16 << 20  # ours are a few kB; this only stops a hostile one filling memory
_MAX_DEPTH = 32  # our deepest record is 5 levels; bounded, so nothing that walks a record recurses too deep
_INT64 = (1 << 63) - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Backslashes and colons (Windows separators, drive letters, NTFS streams) and control characters.
_UNSAFE_IN_PATH = re.compile(r"[\\:\x00-\x1f\x7f]")
_CHUNK = 1 << 20
_REQUIRED: Any = object()


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
class TokenizerEntry:
    """How texts become token ids, exactly as sentence-transformers does it."""

    file: str
    max_seq_length: int
    do_lower_case: bool
    pad_token_id: int
    pad_token: str
    strip: bool = True


@dataclass
class EncoderEntry:
    file: str
    input_names: list[str]
    hidden_size: int
    transform: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolingEntry:
    """`include_prompt=False`: the prompt's tokens are left out of the pooling (sentence-transformers'
    Pooling option of that name)."""

    file: str
    modes: list[str]
    dimension: int
    transform: dict[str, Any] = field(default_factory=dict)
    include_prompt: bool = True


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
    `prompts` maps prompt names to the text prepended to each input, as sentence-transformers'
    `prompts`; `default_prompt_name` is the one used when none is named (None: no prompt).
    """

    source: dict[str, Any]
    versions: dict[str, str]
    opset: int
    precision: str
    tokenizer: TokenizerEntry
    encoder: EncoderEntry
    pooling: PoolingEntry
    heads: dict[str, HeadEntry]
    default_head: str
    validation: dict[str, Any]
    tokenizer_check: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
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
        """Write `manifest.json` into `folder`, refusing (ArtifactError) what `from_dict` would refuse."""
        path = Path(folder) / MANIFEST_NAME
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        Manifest.from_dict(_parse_json(text, str(path)), origin=str(path))  # never write what cannot be read
        path.write_text(text, encoding="utf-8")
        return path

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, origin: str = MANIFEST_NAME) -> "Manifest":
        """Build a `Manifest` from parsed JSON, checking every field's type and range, that every
        path stays inside the artifact folder, and that the fields agree with each other.

        Raises `ArtifactError` naming `origin` and the field.
        """
        top = _Fields(data, "", origin)
        version = top.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int):
            _refuse(origin, "format_version", f"the integer {FORMAT_VERSION}", version)
        if version not in READABLE_VERSIONS:
            raise ArtifactError(
                f"{origin}: unknown format version {version!r}; this jobbert-onnx reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}. Re-export the model with this version, or install "
                "the matching one."
            )
        _check_depth(data, origin)

        tokenizer = top.object("tokenizer")
        encoder = top.object("encoder")
        pooling = top.object("pooling")
        heads = top.object("heads")
        if not heads.data:
            _refuse(origin, "heads", "an object with at least one head", heads.data)
        manifest = cls(
            format_version=version,
            source=_source(top.get("source"), origin),
            versions=top.strings("versions"),
            opset=top.integer("opset", 1, 1000),
            precision=top.text("precision"),
            tokenizer=TokenizerEntry(
                file=tokenizer.path("file"),
                max_seq_length=tokenizer.integer("max_seq_length", 1, SEQ_LENGTH_LIMIT),
                do_lower_case=tokenizer.boolean("do_lower_case"),
                pad_token_id=tokenizer.integer("pad_token_id", 0, (1 << 32) - 1),  # tokenizers' ids are u32
                pad_token=tokenizer.text("pad_token"),
                strip=tokenizer.boolean("strip", True),
            ),
            encoder=EncoderEntry(
                file=encoder.path("file"),
                input_names=encoder.names("input_names", allowed=TOKENIZER_OUTPUTS),
                hidden_size=encoder.integer("hidden_size", 1, WIDTH_LIMIT),
                transform=_transform(encoder, origin),
            ),
            pooling=PoolingEntry(
                file=pooling.path("file"),
                modes=pooling.names("modes"),
                dimension=pooling.integer("dimension", 1, WIDTH_LIMIT),
                transform=_transform(pooling, origin),
                include_prompt=pooling.boolean("include_prompt", True),
            ),
            heads={name: _head(heads, name) for name in heads.keys()},
            default_head=top.text("default_head"),
            validation=_validation(top.get("validation"), origin),
            tokenizer_check=_tokenizer_check(top.get("tokenizer_check", {}), origin),
            prompts=top.strings("prompts", {}),
            default_prompt_name=top.text("default_prompt_name", None),
            files=_files(top.object("files"), origin),
        )
        for fields in (top, tokenizer, encoder, pooling):
            fields.finish()

        if manifest.default_head not in manifest.heads:
            raise ArtifactError(f"{origin}: default_head {manifest.default_head!r} must be one of the heads "
                                f"{sorted(manifest.heads)}.")
        if manifest.default_prompt_name is not None and manifest.default_prompt_name not in manifest.prompts:
            raise ArtifactError(f"{origin}: default_prompt_name {manifest.default_prompt_name!r} must be one of "
                                f"the prompts {sorted(manifest.prompts)}.")
        roles = {"tokenizer.file": manifest.tokenizer.file, "encoder.file": manifest.encoder.file,
                 "pooling.file": manifest.pooling.file,
                 **{f"heads.{name}.file": head.file for name, head in manifest.heads.items()}}
        for role, rel in roles.items():
            if rel not in manifest.files:
                raise ArtifactError(f"{origin}: {role} {rel!r} is not listed in files, so its sha256 "
                                    "would never be checked.")
        return manifest

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        """Read `manifest.json` from an artifact folder (no checksum verification)."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: not an artifact folder (it does not exist or is not a directory).")
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing; {folder} is not a complete jobbert-onnx artifact.") from None
        except OSError as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc}).") from exc
        _check_regular(path, info)
        if info.st_size > _MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path}: {info.st_size} bytes, too large for a manifest "
                                f"(at most {_MAX_MANIFEST_BYTES}).")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc}).") from exc
        return cls.from_dict(_parse_json(text, str(path)), origin=str(path))

    def verify_files(self, folder: str | Path) -> None:
        """Check that `folder` holds exactly the listed files (and the manifest), each a regular
        file with its recorded size and sha256.

        Raises `ArtifactError` naming the first file that is missing, differs, is a link or a
        special file, or is not listed.
        """
        # Confinement, in three parts. (1) `from_dict` admits only plain relative paths (no '..',
        # no absolute or Windows paths). (2) Nothing in the folder may be a symbolic link, so such
        # a path cannot lead out either; the folder itself may be reached through one. (3) A graph
        # may name any file of its own folder as external data (onnxruntime 1.32 refuses locations
        # outside it, links included; tests/test_manifest_hardening.py checks that), so every file
        # in the folder must be listed, and is then checked. Nothing outside the folder is touched.
        folder = Path(folder)
        present = _regular_files(folder)
        for rel in self.files:
            if rel not in present:
                raise ArtifactError(f"{folder / rel}: missing from the artifact.")
        unlisted = sorted(set(present) - set(self.files) - {MANIFEST_NAME})
        if unlisted:
            raise ArtifactError(
                f"{folder / unlisted[0]}: not listed in {MANIFEST_NAME}. An artifact holds only the files its "
                "manifest lists, since a graph may read any file beside it; remove it, or re-export."
            )
        for rel, entry in self.files.items():
            path = folder / rel
            if present[rel] != entry.size:
                raise ArtifactError(f"{path}: size {present[rel]} does not match the manifest ({entry.size}); "
                                    "the file is damaged.")
            if sha256_of(path) != entry.sha256:
                raise ArtifactError(f"{path}: sha256 does not match the manifest; the file is damaged or was changed.")


    def verify_graphs(self, folder: str | Path) -> None:
        """Check that each graph entry names an ONNX graph of its kind: one that onnxruntime loads,
        with the inputs the runtime feeds it and the output it reads (and a head's width).

        Checksums cannot tell: a manifest may point a head at `tokenizer.json`, or the pooling entry
        at a head graph, with every sha256 right. Raises `ArtifactError` naming the file and the
        entry. Loads onnxruntime (the runtime's own dependency), without graph optimizations.
        """
        import onnxruntime as ort  # here, so that reading a manifest needs the standard library only

        folder = Path(folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its warnings are not ours to print; failures raise
        # (entry, file, the inputs the runtime feeds, the output it reads, the width of that output)
        graphs = [("encoder.file", self.encoder.file, self.encoder.input_names, "token_embeddings", None),
                  ("pooling.file", self.pooling.file, ["token_embeddings", "attention_mask"], "sentence_embedding",
                   None),
                  *((f"heads.{name}.file", head.file, ["sentence_embedding"], "embedding", head.dimension)
                    for name, head in self.heads.items())]
        for role, rel, inputs, output, width in graphs:
            path = folder / rel
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
                reason = " ".join(str(exc).split())[:300]
                raise ArtifactError(f"{path}: {role} is not an ONNX graph onnxruntime can load ({reason}).") from None
            declared = sorted(i.name for i in session.get_inputs())
            outputs = {o.name: o for o in session.get_outputs()}
            read = output if output in outputs or len(outputs) != 1 else next(iter(outputs))
            if declared != sorted(inputs) or read not in outputs:
                raise ArtifactError(f"{path}: {role} has inputs {declared} and outputs {sorted(outputs)}; the runtime "
                                    f"feeds it {sorted(inputs)} and reads {output!r}: not the graph of this entry.")
            shape = outputs[read].shape
            if width is not None and shape and isinstance(shape[-1], int) and shape[-1] != width:
                raise ArtifactError(f"{path}: {role} outputs {shape[-1]} dimensions but the manifest says {width}.")


# -- reading helpers ---------------------------------------------------------------------------
def _show(value: Any) -> str:
    """A short JSON rendering of a refused value, for error messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "an array"
    if any(isinstance(v, int) and abs(v) > _INT64 for v in (value if isinstance(value, list) else [value])):
        return "a huge integer"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _refuse(origin: str, name: str, expected: str, value: Any) -> NoReturn:
    raise ArtifactError(f"{origin}: {name} must be {expected}, got {_show(value)}.")


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


class _Fields:
    """One JSON object of the manifest, read field by field with typed getters whose errors name
    the manifest and the field. `finish()` refuses keys no getter read: a typo, or a field of a
    newer format that this runtime would otherwise silently ignore."""

    def __init__(self, value: Any, name: str, origin: str) -> None:
        if not isinstance(value, dict):
            _refuse(origin, name or "the manifest", "a JSON object", value)
        self.data: dict[str, Any] = value
        self.name, self.origin = name, origin
        self._read: set[str] = set()

    def field(self, key: str) -> str:
        return _join(self.name, key)

    def keys(self) -> list[str]:
        """Every key, marked read (a table of names: heads, files, prompts)."""
        self._read.update(self.data)
        return list(self.data)

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise ArtifactError(f"{self.origin}: {self.field(key)} is missing.")
        return default

    def object(self, key: str) -> _Fields:
        return _Fields(self.get(key), self.field(key), self.origin)

    def integer(self, key: str, low: int, high: int = _INT64, default: Any = _REQUIRED) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            _refuse(self.origin, self.field(key), f"an integer from {low} to {high}", value)
        return value

    def number(self, key: str, default: Any = _REQUIRED) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _refuse(self.origin, self.field(key), "a number", value)
        return value

    def boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            _refuse(self.origin, self.field(key), "true or false", value)
        return value

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        """A string; None only when None is the default (an optional field)."""
        value = self.get(key, default)
        if not isinstance(value, str) and not (value is None and default is None):
            _refuse(self.origin, self.field(key), "a string" if default is not None else "a string or null", value)
        return value

    def strings(self, key: str, default: Any = _REQUIRED) -> dict[str, str]:
        """An object of names to strings."""
        table = _Fields(self.get(key, default), self.field(key), self.origin)
        for name in table.keys():
            table.text(name)
        return dict(table.data)

    def names(self, key: str, allowed: tuple[str, ...] | None = None) -> list[str]:
        """A non-empty list of distinct, non-empty strings, each in `allowed` when given."""
        value = self.get(key)
        ok = (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
              and len(set(value)) == len(value) and (allowed is None or set(value) <= set(allowed)))
        if not ok:
            among = f" among {list(allowed)}" if allowed else ""
            _refuse(self.origin, self.field(key), f"a non-empty list of distinct names{among}", value)
        return list(value)

    def path(self, key: str) -> str:
        value = self.get(key)
        _check_relative(value, self.field(key), self.origin)
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise ArtifactError(f"{self.origin}: {self.field(unknown[0])} is not a field of format version "
                                f"{FORMAT_VERSION}; the artifact is damaged or needs a newer jobbert-onnx.")


def _check_relative(value: Any, name: str, origin: str) -> None:
    """Refuse anything but a plain relative path such as 'heads/anchor.onnx': no '..', '.', empty
    or absolute parts, no backslashes, drive letters or control characters. Checked on the text
    alone, so a hostile path is refused before anything touches the file system."""
    if (isinstance(value, str) and 0 < len(value) <= 4096 and not _UNSAFE_IN_PATH.search(value)
            and all(part not in ("", ".", "..") for part in value.split("/"))):
        return
    _refuse(origin, name, "a relative path inside the artifact folder ('/' between plain names)", value)


def _spelling(rel: str) -> str:
    """What a case-insensitive, Unicode-normalizing file system (Windows, macOS) takes for one
    name: case folded, normalized, trailing dots and spaces dropped (Windows)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", rel).casefold())
    return "/".join(part.rstrip(". ") for part in folded.split("/"))


def _files(table: _Fields, origin: str) -> dict[str, FileEntry]:
    files: dict[str, FileEntry] = {}
    spellings: dict[str, str] = {_spelling(MANIFEST_NAME): MANIFEST_NAME}
    for rel in table.keys():
        name = f"files.{rel}"
        _check_relative(rel, name, origin)
        twin = spellings.setdefault(_spelling(rel), rel)
        if twin == MANIFEST_NAME:
            raise ArtifactError(f"{origin}: {name}: the manifest cannot list itself.")
        if twin != rel:
            raise ArtifactError(f"{origin}: {name}: the same file is listed twice, as {twin!r} and {rel!r} "
                                "(one file on a case-insensitive or normalizing file system).")
        entry = _Fields(table.data[rel], name, origin)
        files[rel] = FileEntry(size=entry.integer("size", 0), sha256=entry.text("sha256"))
        if not _SHA256.fullmatch(files[rel].sha256):
            _refuse(origin, f"{name}.sha256", "64 lower-case hex digits", files[rel].sha256)
        entry.finish()
    return files


def _head(heads: _Fields, name: str) -> HeadEntry:
    if not name:
        _refuse(heads.origin, "heads", "an object whose keys (head names) are non-empty", heads.data)
    fields = heads.object(name)
    head = HeadEntry(
        file=fields.path("file"),
        dimension=fields.integer("dimension", 1, WIDTH_LIMIT),
        modules=fields.get("modules"),
        transform=_transform(fields, heads.origin),
    )
    if not isinstance(head.modules, list) or not all(isinstance(m, str) for m in head.modules):
        _refuse(heads.origin, fields.field("modules"), "a list of strings", head.modules)
    fields.finish()
    return head


# -- the free-form records: any further keys, but the ones that are read have their types ------
def _source(value: Any, origin: str) -> dict[str, Any]:
    source = _Fields(value, "source", origin)
    for key in ("model", "kind"):
        source.text(key, "")
    source.text("revision", None)
    return source.data


def _transform(entry: _Fields, origin: str) -> dict[str, Any]:
    """How a graph was cast or quantized; an int8 encoder that validated also records its `plan`
    (export/int8_plans.py)."""
    transform = _Fields(entry.get("transform", {}), entry.field("transform"), origin)
    transform.text("method", "")
    if "plan" in transform.data:
        plan = transform.object("plan")
        attempts = plan.get("attempts")
        if not isinstance(attempts, list) or not attempts:
            _refuse(origin, plan.field("attempts"), "a non-empty array", attempts)
        for index, attempt in enumerate(attempts):
            tried = _Fields(attempt, plan.field(f"attempts.{index}"), origin)
            tried.integer("fp32_matmuls", 0)
            tried.number("min_cosine")
        plan.integer("chosen", 0, len(attempts) - 1)
        plan.boolean("met_margin")
        plan.number("target_min_cosine")
    return transform.data


def _validation(value: Any, origin: str) -> dict[str, Any]:
    validation = _Fields(value, "validation", origin)
    validation.boolean("performed", False)
    validation.text("reason", "")
    if "heads" in validation.data:
        heads = validation.object("heads")
        for name in heads.keys():
            parity = heads.object(name)
            parity.number("min_cosine")
            parity.number("mean_cosine")
    return validation.data


def _tokenizer_check(value: Any, origin: str) -> dict[str, Any]:
    check = _Fields(value, "tokenizer_check", origin)
    if check.data:  # empty in manifests older than the check
        check.text("chosen")
        if check.boolean("compared", False):
            check.integer("texts_compared", 0)
            check.integer("disagreements", 0)
    return check.data


def _check_depth(data: Any, origin: str) -> None:
    """Refuse records nested deeper than any manifest's, without recursing (a hostile manifest must
    give an ArtifactError, never a RecursionError, in whatever later walks it)."""
    pending = [(value, 1, key) for key, value in data.items()]
    while pending:
        value, depth, key = pending.pop()
        if depth > _MAX_DEPTH:
            raise ArtifactError(f"{origin}: {key} is nested more than {_MAX_DEPTH} levels deep; "
                                "not a jobbert-onnx manifest.")
        if isinstance(value, dict):
            pending += [(v, depth + 1, key) for v in value.values()]
        elif isinstance(value, list):
            pending += [(v, depth + 1, key) for v in value]


def _parse_json(text: str, origin: str) -> Any:
    """Parse strict JSON: a duplicate key, NaN or Infinity, or nesting too deep for Python's parser
    is an ArtifactError naming `origin`."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data = dict(pairs)
        if len(data) != len(pairs):
            seen: set[str] = set()
            twice = next(key for key, _ in pairs if key in seen or seen.add(key))
            raise ArtifactError(f"{origin}: duplicate key {twice!r} in a JSON object; "
                                "which one counts would be a guess.")
        return data

    def constant(name: str) -> NoReturn:
        raise ArtifactError(f"{origin}: {name} is not a JSON number.")

    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except RecursionError:
        raise ArtifactError(f"{origin}: nested too deeply to be a manifest.") from None
    except ValueError as exc:  # JSONDecodeError, or an integer with more digits than Python converts
        raise ArtifactError(f"{origin}: unreadable manifest ({exc}).") from exc


_LINK = ("{path}: a symbolic link; an artifact holds only regular files, so that nothing it names can lead "
         "outside its folder.")


def _check_regular(path: Path, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise ArtifactError(_LINK.format(path=path))
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{path}: not a regular file.")


def _regular_files(folder: Path) -> dict[str, int]:
    """Every file under `folder` as {relative path: size}, never following a link: a symbolic link
    (or a Windows junction) or a special file anywhere is an ArtifactError."""
    found: dict[str, int] = {}
    pending = [(folder, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise ArtifactError(f"{directory}: unreadable ({exc}).") from exc
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink() or getattr(entry, "is_junction", lambda: False)():  # is_junction: 3.12+
                raise ArtifactError(_LINK.format(path=path))
            if entry.is_dir(follow_symlinks=False):
                pending.append((path, f"{prefix}{entry.name}/"))
                continue
            info = entry.stat(follow_symlinks=False)
            _check_regular(path, info)
            found[prefix + entry.name] = info.st_size
    return found
