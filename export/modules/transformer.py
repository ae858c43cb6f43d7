"""Transformer: the encoder, a Hugging Face model folder plus sentence-transformers' tokenization
settings, and the torch module that returns its token embeddings."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .base import CheckpointError, ReadContext, read_object, weights_file

if TYPE_CHECKING:
    from torch import nn


@dataclass
class TransformerConfig:
    """The encoder's config; `num_heads` is for onnxruntime's fusions (None: not fused)."""

    role: ClassVar[str] = "encoder"
    path: Path
    max_seq_length: int
    do_lower_case: bool
    model_type: str
    hidden_size: int
    weights: Path
    num_heads: int | None = None

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> TransformerConfig:
        st_config_path = folder / "sentence_bert_config.json"
        st_config = read_object(st_config_path) if st_config_path.is_file() else {}
        hf_config = read_object(folder / "config.json")
        max_len = st_config.get("max_seq_length")
        if max_len is None:
            # Same fallback as sentence-transformers: the tokenizer's limit, capped by the position table.
            tok_config_path = folder / "tokenizer_config.json"
            tok_limit = read_object(tok_config_path).get("model_max_length") if tok_config_path.is_file() else None
            candidates = [v for v in (tok_limit, hf_config.get("max_position_embeddings"))
                          if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 10**6]
            if not candidates:
                raise CheckpointError(f"{st_config_path}: no max_seq_length, and none can be derived from the tokenizer.")
            max_len = min(candidates)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise CheckpointError(f"{st_config_path}: max_seq_length must be a positive integer, got {max_len!r}.")
        hidden = hf_config.get("hidden_size") or hf_config.get("d_model")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise CheckpointError(f"{folder / 'config.json'}: no hidden_size.")
        heads = hf_config.get("num_attention_heads")
        heads = heads if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 and hidden % heads == 0 else None
        return cls(path=folder, max_seq_length=max_len, do_lower_case=bool(st_config.get("do_lower_case", False)),
                   model_type=str(hf_config.get("model_type", "unknown")), hidden_size=hidden,
                   weights=weights_file(folder, context.allow_pickle), num_heads=heads)

    def build(self, tokenizer_outputs: list[str]) -> nn.Module:
        """The encoder module; `tokenizer_outputs` is the tokenizer's `model_input_names`."""
        return encoder_class()(self, tokenizer_outputs)


def _encoder_inputs(emitted: list[str], model: nn.Module) -> list[str]:
    """The inputs sentence-transformers feeds: what the tokenizer emits and the model accepts."""
    accepted = inspect.signature(model.forward).parameters
    extra = ["token_type_ids"] if "token_type_ids" in emitted and "token_type_ids" in accepted else []
    return ["input_ids", "attention_mask", *extra]


@functools.cache
def encoder_class() -> type[nn.Module]:
    """`EncoderModule`, defined on first use so that reading configs never imports torch."""
    from torch import Tensor, nn

    class EncoderModule(nn.Module):
        """The Hugging Face encoder, returning only the token embeddings."""

        def __init__(self, spec: TransformerConfig, tokenizer_outputs: list[str]):
            super().__init__()
            from transformers import AutoConfig, AutoModel

            config = AutoConfig.from_pretrained(spec.path)
            # Eager attention traces to plain ops that every onnxruntime provider runs.
            self.model = AutoModel.from_pretrained(
                spec.path,
                config=config,
                attn_implementation="eager",
                use_safetensors=spec.weights.suffix == ".safetensors",
            )
            self.model.eval()
            self.input_names = _encoder_inputs(tokenizer_outputs, self.model)

        def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state

    return EncoderModule
