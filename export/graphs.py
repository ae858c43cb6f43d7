"""Turning the PyTorch modules into fp32 ONNX graphs with dynamic batch and sequence axes."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .torch_modules import EncoderModule, HeadModule, PoolingModule

MIN_OPSET = 17
ENCODER_FILE = "encoder.onnx"
POOLING_FILE = "pooling.onnx"


def head_file(name: str) -> str:
    return f"heads/{name}.onnx"


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


def export_encoder(encoder: EncoderModule, path: Path, opset: int) -> None:
    ids, mask = _dummy_tokens()
    args = (ids, mask) + ((torch.zeros_like(ids),) if "token_type_ids" in encoder.input_names else ())
    token_axes = {0: "batch", 1: "sequence"}
    axes = {name: token_axes for name in encoder.input_names} | {"token_embeddings": token_axes}
    _export(encoder, args, path, encoder.input_names, "token_embeddings", axes, opset)


def export_pooling(pooling: PoolingModule, hidden: int, path: Path, opset: int) -> None:
    _, mask = _dummy_tokens()
    tokens = torch.randn(mask.shape[0], mask.shape[1], hidden)
    axes = {"token_embeddings": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "sentence_embedding": {0: "batch"}}
    _export(pooling, (tokens, mask), path, ["token_embeddings", "attention_mask"], "sentence_embedding", axes, opset)


def export_head(head: HeadModule, dimension: int, path: Path, opset: int) -> None:
    # ONNX names are single-assignment, so the head's output cannot reuse its input's name.
    axes = {"sentence_embedding": {0: "batch"}, "embedding": {0: "batch"}}
    _export(head, (torch.randn(2, dimension),), path, ["sentence_embedding"], "embedding", axes, opset)
