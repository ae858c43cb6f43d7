"""Turning the PyTorch modules into fp32 ONNX graphs with dynamic batch and sequence axes.

Each module is what its config's `build()` returns (`export/modules/`); their classes are defined
only when built, so the parameters here are typed as `nn.Module`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

ENCODER_FILE = "encoder.onnx"
POOLING_FILE = "pooling.onnx"


# A head name that already reads as a portable file name keeps it: `heads/anchor.onnx`.
_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Device names that Windows will not open as files, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def head_files(names: Iterable[str]) -> dict[str, str]:
    """The graph file of each head (a route name from the checkpoint), unique, under `heads/`.

    Route names are data and never become paths: `anchor` keeps `heads/anchor.onnx`, any other
    name (`Query Model`, `запрос`, `../../x`) gets an ASCII slug and a hash of the name
    (`heads/query-model-1a2b3c4d.onnx`). File names are lower case, so no two clash on a
    case-insensitive file system either; the manifest maps each real name to its file.
    """
    files: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        stem = name if _PLAIN_NAME.fullmatch(name) and name not in _RESERVED else _slug_and_hash(name)
        unique, count = stem, 1
        while unique in taken:  # only a plain name equal to another name's slug and hash gets here
            count += 1
            unique = f"{stem}-{count}"
        taken.add(unique)
        files[name] = f"heads/{unique}.onnx"
    return files


def _slug_and_hash(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9_]+", "-", ascii_name).strip("-_")[:40].strip("-_") or "head"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug}-{digest}"


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], output: str,
            axes: dict[str, dict[int, str]], opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation and about traced shape
        # arithmetic; neither matters for these fixed-structure graphs, and validation checks them.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), args, str(path), input_names=inputs, output_names=[output],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def _dummy_tokens(batch: int = 2, seq: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    # Ids 5.. avoid special tokens; the second row is padded so masking is traced.
    ids = torch.arange(batch * seq, dtype=torch.long).reshape(batch, seq) % 50 + 5
    mask = torch.ones_like(ids)
    mask[1, seq // 2:] = 0
    return ids, mask


def export_encoder(encoder: nn.Module, path: Path, opset: int) -> None:
    ids, mask = _dummy_tokens()
    args = (ids, mask) + ((torch.zeros_like(ids),) if "token_type_ids" in encoder.input_names else ())
    token_axes = {0: "batch", 1: "sequence"}
    axes = {name: token_axes for name in encoder.input_names} | {"token_embeddings": token_axes}
    _export(encoder, args, path, encoder.input_names, "token_embeddings", axes, opset)


def export_pooling(pooling: nn.Module, hidden: int, path: Path, opset: int) -> None:
    _, mask = _dummy_tokens()
    tokens = torch.randn(mask.shape[0], mask.shape[1], hidden)
    axes = {"token_embeddings": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "sentence_embedding": {0: "batch"}}
    _export(pooling, (tokens, mask), path, ["token_embeddings", "attention_mask"], "sentence_embedding", axes, opset)


def export_head(head: nn.Module, dimension: int, path: Path, opset: int) -> None:
    # ONNX names are single-assignment, so the head's output cannot reuse its input's name.
    axes = {"sentence_embedding": {0: "batch"}, "embedding": {0: "batch"}}
    _export(head, (torch.randn(2, dimension),), path, ["sentence_embedding"], "embedding", axes, opset)
