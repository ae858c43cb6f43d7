"""Normalize: the embedding scaled to unit length."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .base import ReadContext

if TYPE_CHECKING:
    from torch import nn


@dataclass
class NormalizeConfig:
    role: ClassVar[str] = "head"

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> NormalizeConfig:
        return cls()

    def output_dimension(self, input_dimension: int, where: str) -> int:
        return input_dimension

    def describe(self) -> str:
        return "Normalize"

    def build(self) -> nn.Module:
        return normalize_class()()


@functools.cache
def normalize_class() -> type[nn.Module]:
    """`NormalizeModule`, defined on first use so that reading configs never imports torch."""
    from torch import Tensor, nn

    class NormalizeModule(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return nn.functional.normalize(x, p=2, dim=-1)

    return NormalizeModule
