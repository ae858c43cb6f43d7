"""Pooling: token embeddings -> one vector per text, as sentence-transformers computes it.

The pooling module is written here rather than taken from sentence-transformers, so that
export-time validation compares two independent implementations. torch is imported inside the
functions, so that reading the config does not load it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .base import CheckpointError, ReadContext, positive_int, read_object

if TYPE_CHECKING:
    from torch import Tensor, nn

# Pooling modes, in the order sentence-transformers concatenates them, with the legacy boolean
# key of `1_Pooling/config.json` that selects each. Each mode's computation is `POOLING_FUNCTIONS[mode]`.
POOLING_MODES = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


@dataclass
class PoolingConfig:
    """Token embeddings -> one vector per text; several modes concatenate.

    `include_prompt=False` makes pooling skip a prompt's tokens. The runtime does that by masking
    them in the pooling graph's `attention_mask` input, so the graph is the same either way.
    """

    role: ClassVar[str] = "pooling"
    modes: list[str]
    dimension: int
    include_prompt: bool = True

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> PoolingConfig:
        path = folder / "config.json"
        config = read_object(path)
        if "pooling_mode" in config:  # sentence-transformers >= 6
            raw = config["pooling_mode"]
            modes = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        else:
            modes = [mode for mode, key in POOLING_MODES.items() if config.get(key)]
        unknown = [m for m in modes if m not in POOLING_MODES]
        if not modes or unknown:
            raise CheckpointError(
                f"{path}: unsupported pooling mode {unknown or 'none'}; supported: {', '.join(POOLING_MODES)}."
            )
        key = "word_embedding_dimension" if "word_embedding_dimension" in config else "embedding_dimension"
        include_prompt = config.get("include_prompt", True)
        if not isinstance(include_prompt, bool):
            raise CheckpointError(f"{path}: include_prompt must be true or false, got {include_prompt!r}.")
        if not include_prompt and "weightedmean" in modes:
            # sentence-transformers weighs the remaining tokens by their position in the unmasked
            # text; a graph fed only the masked attention_mask cannot reproduce that.
            raise CheckpointError(f"{path}: weightedmean pooling with include_prompt false is not supported.")
        return cls(modes=modes, dimension=positive_int(config, key, path), include_prompt=include_prompt)

    @property
    def output_dimension(self) -> int:
        return self.dimension * len(self.modes)

    def build(self) -> nn.Module:
        return pooling_class()(self)


def _cls(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    import torch

    # The first attended position, which is 0 unless the batch is left-padded.
    first = attention_mask.to(torch.int32).argmax(dim=1)
    index = first.view(-1, 1, 1).expand(-1, 1, token_embeddings.shape[-1])
    return torch.gather(token_embeddings, 1, index).squeeze(1)


def _max(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values


def _mean_parts(token_embeddings: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    import torch

    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * mask).sum(dim=1), torch.clamp(mask.sum(dim=1), min=1e-9)


def _mean(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    summed, count = _mean_parts(token_embeddings, attention_mask)
    return summed / count


def _mean_sqrt_len(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    import torch

    summed, count = _mean_parts(token_embeddings, attention_mask)
    return summed / torch.sqrt(count)


def _weighted_mean(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    import torch

    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    positions = torch.arange(1, token_embeddings.shape[1] + 1, dtype=token_embeddings.dtype).view(1, -1, 1)
    pad_lengths = attention_mask.to(torch.int32).argmax(dim=1).to(token_embeddings.dtype)
    weights = mask * (positions - pad_lengths.view(-1, 1, 1))
    summed = (token_embeddings * weights).sum(dim=1)
    return summed / torch.clamp(weights.sum(dim=1), min=1e-9)


def _last_token(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    import torch

    seq_len = token_embeddings.shape[1]
    values, indices = attention_mask.to(torch.int32).flip(1).max(dim=1)
    indices = torch.where(values == 0, torch.full_like(indices, seq_len - 1), indices)
    index = (seq_len - indices - 1).view(-1, 1, 1).expand(-1, 1, token_embeddings.shape[-1])
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    return torch.gather(token_embeddings * mask, 1, index).squeeze(1)


# One function per mode of `POOLING_MODES`, as sentence-transformers computes it.
POOLING_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cls": _cls,
    "max": _max,
    "mean": _mean,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "weightedmean": _weighted_mean,
    "lasttoken": _last_token,
}


@functools.cache
def pooling_class() -> type[nn.Module]:
    """`PoolingModule`, defined on first use so that reading configs never imports torch."""
    import torch
    from torch import Tensor, nn

    class PoolingModule(nn.Module):
        """sentence-transformers pooling over right- or left-padded token embeddings; modes concatenate."""

        def __init__(self, spec: PoolingConfig):
            super().__init__()
            self.functions = [POOLING_FUNCTIONS[mode] for mode in spec.modes]

        def forward(self, token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
            outputs = [pool(token_embeddings, attention_mask) for pool in self.functions]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)

    return PoolingModule
