"""What every module kind shares: the error, the reading context and the config file helpers.

Nothing here imports torch at import time, so that reading a checkpoint's configs stays torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from jobbert_onnx.runtime.errors import JobbertOnnxError

if TYPE_CHECKING:
    from torch import Tensor, nn


class CheckpointError(JobbertOnnxError):
    """The checkpoint cannot be exported as it is (unsupported module, bad config, pickled weights)."""


SAFE_WEIGHTS = "model.safetensors"
PICKLED_WEIGHTS = "pytorch_model.bin"


class HeadStep(Protocol):
    """A module after pooling (Dense, Normalize): what every step of a head must provide."""

    def output_dimension(self, input_dimension: int, where: str) -> int: ...
    def describe(self) -> str: ...
    def build(self) -> nn.Module: ...


@dataclass(frozen=True)
class ReadContext:
    """What every module reader needs besides its own folder.

    `types` is the table of kinds (`checkpoint.MODULE_TYPES`); it travels here so that a router
    reads its inner modules with the same table as the checkpoint, without importing it.
    """

    root: Path
    allow_pickle: bool
    types: Mapping[str, type]

    def inside(self, folder: Path, where: str) -> Path:
        """`folder`, resolved, refused unless it stays inside the checkpoint (a module path is untrusted)."""
        resolved = folder.resolve()
        root = self.root.resolve()
        if resolved != root and root not in resolved.parents:
            raise CheckpointError(f"{where}: module folder {folder} leaves the checkpoint {self.root}.")
        return resolved

    def read_module(self, type_name: str, folder: Path, where: str) -> Any:
        """Read one module folder with the kind registered for `type_name` (a sentence-transformers class path)."""
        kind = type_name.rsplit(".", 1)[-1]
        if not type_name.startswith("sentence_transformers.") or kind not in self.types:
            raise CheckpointError(f"{where}: unsupported module {type_name!r}. Supported: sentence-transformers "
                                  f"{', '.join(sorted(self.types))}.")
        return self.types[kind].read(folder, self)

    def kinds(self, role: str) -> list[str]:
        """The class names of the kinds with `role`, for error messages."""
        return [name for name, cls in self.types.items() if cls.role == role]


def read_json(path: Path) -> Any:
    """`path` as JSON; a missing or unreadable file is a `CheckpointError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc}).") from exc


def read_object(path: Path) -> dict[str, Any]:
    """`path` as a JSON object, which every module config is."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object.")
    return config


def positive_int(config: dict[str, Any], key: str, path: Path) -> int:
    """`config[key]`, refused unless a positive integer (JSON's `true` is not one)."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: {key!r} must be a positive integer, got {value!r}.")
    return value


def weights_file(folder: Path, allow_pickle: bool) -> Path:
    """The weights of a module folder: safetensors, or a pickle only when explicitly allowed."""
    if (folder / SAFE_WEIGHTS).is_file():
        return folder / SAFE_WEIGHTS
    if (folder / PICKLED_WEIGHTS).is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{folder / PICKLED_WEIGHTS}: weights are a pickle, and unpickling can run arbitrary code. "
                "Convert them to safetensors, or pass --allow-pickle if you trust this checkpoint."
            )
        return folder / PICKLED_WEIGHTS
    raise CheckpointError(f"{folder}: no weights found (expected {SAFE_WEIGHTS} or {PICKLED_WEIGHTS}).")


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """Weights from safetensors, or from a pickle that `weights_file` already allowed."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=False)
