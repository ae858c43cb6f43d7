"""Where and how the artifact folder is written: atomically, and never over a user's files.

An export builds everything in a hidden staging folder beside the target,

    .OUT.<8 hex digits>.partial/
        owner.json   the process writing here (host, pid, start time), written first
        artifact/    renamed to OUT when every step, validation included, has succeeded
        scratch/     intermediate files (the fp32 graphs), on the target's disk where `df` shows them
        old/         the artifact being replaced, between the two renames

and removes the staging folder whatever happens, unless the process is killed. The next export
to the same target then removes it, once `owner.json` proves that the process that wrote it is
gone. An interrupted or failed export never leaves a folder that looks valid.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from jobbert_onnx.runtime.errors import JobbertOnnxError
from jobbert_onnx.runtime.files import write_atomically
from jobbert_onnx.runtime.manifest import MANIFEST_NAME

OWNER_FILE = "owner.json"
_OWNER_TOOL = "jobbert-onnx export"
# Keys every jobbert-onnx manifest holds, whatever its format version.
_MANIFEST_SECTIONS = ("encoder", "pooling", "heads", "files")


class TargetError(JobbertOnnxError):
    """The output folder cannot be written."""


def check_target(target: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse a target whose replacement could destroy anything but an artifact of ours.

    Refused: a file; the `source` model folder, or a folder that holds it (symlinks resolved);
    a non-empty folder that is not a jobbert-onnx artifact; an artifact unless `overwrite`.
    A target inside the source folder is allowed: it touches none of the model's files, and
    hub repositories ship ONNX exports in an `onnx/` folder of the model.
    """
    resolved = Path(target).resolve()
    if source is not None:
        model = Path(source).resolve()
        if resolved == model:
            raise TargetError(f"{target}: is the source model folder; choose another output folder.")
        if resolved in model.parents:
            raise TargetError(f"{target}: contains the source model {model}; writing the artifact there would "
                              "delete it. Choose another output folder.")
    if not resolved.exists():
        return
    if not resolved.is_dir():
        raise TargetError(f"{target}: exists and is not a folder.")
    if not any(resolved.iterdir()):
        return
    problem = _what_replacing_would_delete(resolved)
    if problem:
        raise TargetError(f"{target}: {problem}")
    if not overwrite:
        raise TargetError(f"{target}: folder is not empty (it holds a jobbert-onnx artifact); "
                          "pass --overwrite to replace it.")


def _what_replacing_would_delete(folder: Path) -> str | None:
    """Why replacing the non-empty `folder` could delete files that no export wrote, or None when
    it could not: its manifest.json is one of ours and lists every other file in the folder."""
    manifest = folder / MANIFEST_NAME
    refusal = ("folder is not empty and is not a jobbert-onnx artifact ({}); --overwrite only replaces "
               "an artifact. Choose a new or empty folder.")
    if not manifest.is_file():
        return refusal.format(f"no {MANIFEST_NAME}")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        data = None
    ours = (isinstance(data, dict) and type(data.get("format_version")) is int
            and all(isinstance(data.get(key), dict) for key in _MANIFEST_SECTIONS))
    if not ours:
        return refusal.format(f"its {MANIFEST_NAME} is not a jobbert-onnx manifest")
    unlisted = _unlisted_files(folder, set(data["files"]))
    if unlisted:
        more = f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else ""
        return (f"folder holds files that are not part of its jobbert-onnx artifact: {', '.join(unlisted[:3])}{more}; "
                "--overwrite would delete them. Move them away, or choose a new or empty folder.")
    return None


def _unlisted_files(folder: Path, listed: set[str]) -> list[str]:
    """Files and symlinks under `folder` (relative, sorted) that are neither listed nor the manifest."""
    found = []
    for root, dirs, files in os.walk(folder):  # does not follow symlinked folders: they count as files
        here = Path(root)
        for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
            rel = (here / name).relative_to(folder).as_posix()
            if rel != MANIFEST_NAME and rel not in listed:
                found.append(rel)
    return sorted(found)


@dataclass(frozen=True)
class Staging:
    """The folders of one export in progress (see the module docstring)."""

    artifact: Path  # becomes the target
    scratch: Path  # intermediate files, removed with the staging folder


@contextmanager
def staged_folder(target: Path, overwrite: bool, source: Path | None = None) -> Iterator[Staging]:
    """Yield an empty `Staging` beside `target`; on normal exit its artifact replaces `target`.

    The staging folder is removed on every exit; after a kill, by the next export to `target`.
    """
    target = Path(target).resolve()
    check_target(target, overwrite, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    folder = _new_staging_folder(target)
    try:
        mark_owner(folder, target)
        staging = Staging(artifact=folder / "artifact", scratch=folder / "scratch")
        staging.artifact.mkdir()
        staging.scratch.mkdir()
        yield staging
        check_target(target, overwrite, source)  # it may have changed while we worked
        _usual_permissions(staging.artifact)
        _replace(staging.artifact, target, trash=folder / "old")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _new_staging_folder(target: Path) -> Path:
    while True:
        folder = target.parent / f".{target.name}.{secrets.token_hex(4)}.partial"
        try:
            folder.mkdir(mode=0o700)  # private until the artifact is complete
            return folder
        except FileExistsError:
            continue


def mark_owner(folder: Path, target: Path, pid: int | None = None) -> None:
    """Write `owner.json` into a staging folder: process `pid` (default: this one) writes it for `target`.

    It appears whole or not at all (written aside, then renamed), so it is never read half-written.
    """
    pid = os.getpid() if pid is None else pid
    owner = {"tool": _OWNER_TOOL, "target": str(Path(target).resolve()), "host": socket.gethostname(),
             "pid": pid, "started": _start_token(pid)}
    write_atomically(folder / OWNER_FILE, json.dumps(owner))


def _remove_stale_staging(target: Path) -> None:
    """Delete the staging folders of killed exports to `target`: only a folder named exactly as ours
    whose `owner.json` names this target, and a process on this host that is gone."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[0-9a-f]{{8}}\.partial")  # as _new_staging_folder names them
    for folder in target.parent.iterdir():
        if not (pattern.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink()):
            continue
        owner = _read_owner(folder / OWNER_FILE)
        if owner is None or owner["target"] != str(target) or owner["host"] != socket.gethostname():
            continue  # not provably ours, or written on another machine sharing this disk
        if not _process_alive(owner["pid"], owner["started"]):
            shutil.rmtree(folder, ignore_errors=True)


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The owner marker at `path`, or None when it is missing or not one we wrote."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not (isinstance(owner, dict) and owner.get("tool") == _OWNER_TOOL
            and isinstance(owner.get("target"), str) and isinstance(owner.get("host"), str)
            and type(owner.get("pid")) is int and 0 < owner["pid"] < 2**31  # never 0 or -1: process groups
            and isinstance(owner.get("started"), (str, type(None)))):
        return None
    return owner


def _process_alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` runs and is the one that started at `started`; True when unsure."""
    if os.name != "posix":
        return True  # on Windows, os.kill(pid, 0) would send a signal
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    current = _start_token(pid)
    return current is None or started is None or current == started


def _start_token(pid: int) -> str | None:
    """`<boot id>:<start time>` of a Linux process, which a later process reusing its pid cannot
    share; "exited" for a zombie; None where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name before it may hold spaces
    return "exited" if fields[0] == "Z" else f"{boot}:{fields[19]}"


def _usual_permissions(folder: Path) -> None:
    """Give the folder and its files the modes a plain mkdir/open would (the staging folder is
    private), so a service running as another user can read the artifact."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_graph(model, path: Path, external_weights: bool) -> None:
    """Write an ONNX graph; with `external_weights`, its weights go to `<path>.data` beside it.

    onnxruntime memory-maps external weights instead of copying them out of the protobuf, so a
    process holds each weight once and only the vocabulary rows its texts use (peak RSS figures:
    docs/benchmarks.md, "What each lever did"). It also lifts protobuf's 2 GB limit on a graph file.
    """
    import onnx

    if not external_weights:
        onnx.save(model, str(path))
        return
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)


def _replace(artifact: Path, target: Path, trash: Path) -> None:
    """Rename `artifact` to `target`. An existing `target` moves to `trash` first (a rename onto a
    non-empty folder fails), inside the staging folder, which is removed next, or after a kill."""
    if not target.exists():
        os.rename(artifact, target)
        return
    os.rename(target, trash)
    try:
        os.rename(artifact, target)
    except OSError:
        os.rename(trash, target)
        raise
