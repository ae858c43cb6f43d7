"""PyTorch modules built from a `CheckpointSpec`, shaped for export: one tensor-in, tensor-out
module per graph (encoder, pooling, each head), and one class per config type of
`export/checkpoint.py` (each config's `build()` returns its module).

The pooling and head modules are written here rather than taken from sentence-transformers, so
that export-time validation compares two independent implementations.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, DenseConfig, HeadConfig, PoolingConfig, TransformerConfig


def load_state_dict(path) -> dict[str, Tensor]:
    """Weights from safetensors, or from a pickle that `read_checkpoint` already allowed."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=False)


def _encoder_inputs(emitted: list[str], model: nn.Module) -> list[str]:
    """The inputs sentence-transformers feeds: what the tokenizer emits and the model accepts."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    extra = ["token_type_ids"] if "token_type_ids" in emitted and "token_type_ids" in accepted else []
    return ["input_ids", "attention_mask", *extra]


class EncoderModule(nn.Module):
    """The Hugging Face encoder, returning only the token embeddings.

    `tokenizer_outputs` is the tokenizer's `model_input_names`.
    """

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


def _cls(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    # The first attended position, which is 0 unless the batch is left-padded.
    first = attention_mask.to(torch.int32).argmax(dim=1)
    index = first.view(-1, 1, 1).expand(-1, 1, token_embeddings.shape[-1])
    return torch.gather(token_embeddings, 1, index).squeeze(1)


def _max(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values


def _mean_parts(token_embeddings: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(dim=1), torch.clamp(mask.sum(dim=1), min=1e-9)


def _mean(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    summed, count = _mean_parts(token_embeddings, attention_mask)
    return summed / count


def _mean_sqrt_len(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    summed, count = _mean_parts(token_embeddings, attention_mask)
    return summed / torch.sqrt(count)


def _weighted_mean(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    positions = torch.arange(1, token_embeddings.shape[1] + 1, dtype=token_embeddings.dtype).view(1, -1, 1)
    pad_lengths = attention_mask.to(torch.int32).argmax(dim=1).to(token_embeddings.dtype)
    weights = mask * (positions - pad_lengths.view(-1, 1, 1))
    summed = (token_embeddings * weights).sum(dim=1)
    return summed / torch.clamp(weights.sum(dim=1), min=1e-9)


def _last_token(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    seq_len = token_embeddings.shape[1]
    values, indices = attention_mask.to(torch.int32).flip(1).max(dim=1)
    indices = torch.where(values == 0, torch.full_like(indices, seq_len - 1), indices)
    index = (seq_len - indices - 1).view(-1, 1, 1).expand(-1, 1, token_embeddings.shape[-1])
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return torch.gather(token_embeddings * mask, 1, index).squeeze(1)


# One function per mode of `checkpoint.POOLING_MODES`, as sentence-transformers computes it.
POOLING_FUNCTIONS = {
    "cls": _cls,
    "max": _max,
    "mean": _mean,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "weightedmean": _weighted_mean,
    "lasttoken": _last_token,
}


class PoolingModule(nn.Module):
    """sentence-transformers pooling over right- or left-padded token embeddings; modes concatenate."""

    def __init__(self, spec: PoolingConfig):
        super().__init__()
        self.functions = [POOLING_FUNCTIONS[mode] for mode in spec.modes]

    def forward(self, token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
        outputs = [pool(token_embeddings, attention_mask) for pool in self.functions]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def _activation(name: str, where: str) -> nn.Module:
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{where}: activation {name!r} does not exist in this torch.") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{where}: activation {name!r} is not a torch.nn.Module class.")
    return cls()


class DenseModule(nn.Module):
    def __init__(self, spec: DenseConfig):
        super().__init__()
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.activation = _activation(spec.activation, str(spec.path / "config.json"))
        state = load_state_dict(spec.weights)
        try:
            self.linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        except RuntimeError as exc:
            raise CheckpointError(f"{spec.weights}: weights do not fit {spec.describe()} ({exc}).") from exc

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


class NormalizeModule(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x, p=2, dim=-1)


class HeadModule(nn.Module):
    """The modules of one route, in order; an empty route is the identity."""

    def __init__(self, spec: HeadConfig):
        super().__init__()
        self.layers = nn.ModuleList(module.build() for module in spec.modules)

    def forward(self, sentence_embedding: Tensor) -> Tensor:
        x = sentence_embedding
        for layer in self.layers:
            x = layer(x)
        # An identity graph still needs one node, so an empty head copies its input.
        return x if len(self.layers) else x.clone()
