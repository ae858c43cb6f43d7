"""Resolving the model argument: a local folder, or a Hugging Face hub id fetched with snapshot_download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobbert_onnx.runtime.errors import JobbertOnnxError


# Other runtimes' copies of the weights, which the exporter never reads.
_IGNORED_ON_HUB = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite"]


class SourceError(JobbertOnnxError):
    """The model could not be found locally nor fetched from the hub."""


@dataclass
class ModelSource:
    path: Path
    model: str  # what the user asked for: a path or a hub id
    kind: str  # "local" or "hub"
    revision: str | None  # the resolved commit for hub models

    def to_manifest(self) -> dict[str, str | None]:
        return {"model": self.model, "kind": self.kind, "revision": self.revision}


def resolve_source(model: str, revision: str | None = None) -> ModelSource:
    """Return a local folder for `model`, downloading a hub snapshot when it is not a path."""
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise SourceError(f"{model}: not a folder; pass a sentence-transformers model folder or a hub id.")
        if revision is not None:
            raise SourceError(f"{model}: --revision applies to hub ids, not to local folders.")
        return ModelSource(path=local.resolve(), model=str(local.resolve()), kind="local", revision=None)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise SourceError(f"{model}: no such folder.")
    return _download(model, revision)


def _download(repo_id: str, revision: str | None) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=_IGNORED_ON_HUB))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise SourceError(f"{repo_id}: not found on the Hugging Face hub (revision {revision or 'main'}): {exc}") from exc
    except HFValidationError as exc:
        raise SourceError(f"{repo_id}: neither an existing folder nor a valid hub id ({exc}).") from exc
    except (LocalEntryNotFoundError, OSError) as exc:
        # huggingface_hub raises LocalEntryNotFoundError when offline and nothing is cached.
        raise SourceError(
            f"{repo_id}: the Hugging Face hub cannot be reached and no cached copy exists ({type(exc).__name__}). "
            "Download the model on a connected machine and pass its local folder instead, e.g. "
            "`jobbert-onnx export path/to/JobBERT-v3 out/`."
        ) from exc
    # snapshot folders are named after the resolved commit hash.
    return ModelSource(path=path, model=repo_id, kind="hub", revision=path.name)
