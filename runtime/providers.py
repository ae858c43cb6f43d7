"""Choosing onnxruntime execution providers, without silent fallback to the CPU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Union

import onnxruntime as ort

from .errors import ArtifactError, ProviderError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# What onnxruntime accepts in `providers=`: a name, or (name, options).
ProviderSpec = Union[str, tuple[str, dict[str, Any]]]

# onnxruntime errors that mean the graph file itself is unusable, not the provider.
_GRAPH_ERRORS = {
    "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel", "NotImplemented", "InvalidArgument", "Fail",
}


@dataclass(frozen=True)
class ProviderChoice:
    """The `providers=` list for every session, and the provider they must really run on.

    `required` is None when the caller listed the CPU provider, i.e. accepted a fallback.
    """

    providers: list[ProviderSpec]
    required: str | None


def _name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _check_cuda_install(asked: str) -> None:
    """Raise `ProviderError` unless the CUDA provider can be used; `asked` names the request."""
    available = ort.get_available_providers()
    if CUDA not in available and _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        # Both wheels write the same `onnxruntime` package; whichever was installed last wins,
        # and here the CPU build did.
        raise ProviderError(
            f"{asked}: both `onnxruntime` and `onnxruntime-gpu` are installed, and they must not be "
            "installed together. Run: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    if CUDA not in available:
        raise ProviderError(
            f"{asked}: this onnxruntime has no {CUDA} (available: {', '.join(available)}). "
            "Install the GPU build: pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
            "(uninstall `onnxruntime` first; the two must not be installed together)."
        )


def cuda_device_id(session: ort.InferenceSession) -> int | None:
    """The GPU a session runs on, or None when it runs on the CPU."""
    if session.get_providers()[:1] != [CUDA]:
        return None
    return int(session.get_provider_options().get(CUDA, {}).get("device_id", 0))


def parse_device(device: str) -> tuple[str, int]:
    """'cpu' -> ('cpu', 0); 'cuda' -> ('cuda', 0); 'cuda:1' -> ('cuda', 1)."""
    kind, _, index = str(device).strip().lower().partition(":")
    if kind == "cpu" and not index:
        return "cpu", 0
    if kind == "cuda" and (not index or index.isdigit()):
        return "cuda", int(index or 0)
    raise ProviderError(f"device={device!r}: unknown device; use 'cpu', 'cuda' or 'cuda:<index>'.")


def choose_providers(device: str = "cpu", providers: Sequence[ProviderSpec] | None = None) -> ProviderChoice:
    """Turn `device` (or an explicit `providers` list, which overrides it) into a `ProviderChoice`."""
    if providers is not None:
        if isinstance(providers, str) or not providers:
            raise ProviderError(f"providers={providers!r}: give a non-empty list, e.g. ['{CPU}'].")
        chosen = list(providers)
        names = [_name(p) for p in chosen]
        if CPU in names:
            return ProviderChoice(chosen, required=None)
        missing = [n for n in names if n not in ort.get_available_providers()]
        if CUDA in missing:
            _check_cuda_install(f"providers={names}")
        if missing:
            raise ProviderError(
                f"providers={names}: {', '.join(missing)} not available in this onnxruntime "
                f"(available: {', '.join(ort.get_available_providers())})."
            )
        return ProviderChoice(chosen, required=names[0])
    kind, index = parse_device(device)
    if kind == "cpu":
        return ProviderChoice([CPU], required=CPU)
    _check_cuda_install(f"device={device!r}")
    # The CPU provider stays listed for the few nodes CUDA has no kernel for; `required` still
    # makes the session fail loudly if CUDA itself could not start.
    return ProviderChoice([(CUDA, {"device_id": index}), CPU], required=CUDA)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """SessionOptions with `intra_op_num_threads` set when `threads` is given."""
    options = ort.SessionOptions()
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads={threads!r}: must be a positive integer or None.")
        options.intra_op_num_threads = threads
    return options


def _device_note(choice: ProviderChoice) -> str:
    for spec in choice.providers:
        if not isinstance(spec, str) and spec[0] == choice.required and "device_id" in spec[1]:
            return f" (device_id {spec[1]['device_id']})"
    return ""


def create_session(path: Path, choice: ProviderChoice, options: ort.SessionOptions) -> ort.InferenceSession:
    """An InferenceSession for one graph file, checked to run on `choice.required`.

    Raises `ArtifactError` naming the file when onnxruntime cannot load it, `ProviderError` when
    the session did not get the required provider.
    """
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=choice.providers)
    except Exception as exc:
        if type(exc).__name__ in _GRAPH_ERRORS or choice.required in (None, CPU):
            raise ArtifactError(f"{path}: onnxruntime cannot load this graph ({exc}).") from exc
        raise ProviderError(f"{path}: {choice.required} failed to create a session ({exc}).") from exc
    actual = session.get_providers()
    if choice.required is not None and (not actual or actual[0] != choice.required):
        raise ProviderError(
            f"{path}: asked for {choice.required}{_device_note(choice)} but onnxruntime runs the session on "
            f"{actual}. Either that GPU does not exist (nvidia-smi lists them) or the CUDA/cuDNN libraries "
            "onnxruntime-gpu needs are missing (onnxruntime logged which above; onnxruntime.preload_dlls() "
            "loads them from the nvidia-* wheels)."
        )
    return session
