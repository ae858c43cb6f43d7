"""Exceptions shared by the runtime, the exporter and the CLI.

Every error carries a message a user can act on; the CLI prints it as one line.
"""

from __future__ import annotations

from collections.abc import Iterable


class JobbertOnnxError(Exception):
    """Base class for every error this package raises on purpose."""


class ArtifactError(JobbertOnnxError):
    """An artifact folder is missing, incomplete, corrupt or of an unknown format."""


class ProviderError(JobbertOnnxError):
    """The requested onnxruntime execution provider cannot be used."""


class UnknownHeadError(JobbertOnnxError, KeyError):
    """A head name that the artifact does not have."""

    @classmethod
    def naming(cls, head: str, heads: Iterable[str]) -> "UnknownHeadError":
        """The error for `head`, listing the heads there are (the one wording every surface uses)."""
        return cls(f"head {head!r} does not exist; available heads: {', '.join(heads)}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TextTooLongError(JobbertOnnxError, ValueError):
    """A text too long to tokenize whole, with no cut that provably keeps what truncation keeps."""

    def __init__(self, detail: str, index: int | None = None) -> None:
        super().__init__(detail if index is None else f"texts[{index}]: {detail}")
        self.detail = detail  # the reason, without the text's position
        self.index = index  # position in the caller's list, once known
