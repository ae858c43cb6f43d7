"""Dense: a linear layer and a torch.nn activation on the sentence embedding."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .base import CheckpointError, ReadContext, load_state_dict, positive_int, read_object, weights_file

if TYPE_CHECKING:
    from torch import nn


@dataclass
class DenseConfig:
    role: ClassVar[str] = "head"
    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str
    weights: Path

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> DenseConfig:
        path = folder / "config.json"
        config = read_object(path)
        for key in ("module_input_name", "module_output_name"):
            if config.get(key, "sentence_embedding") != "sentence_embedding":
                raise CheckpointError(f"{path}: Dense on {config[key]!r} is not supported; only on the sentence embedding.")
        activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if not isinstance(activation, str) or not activation.startswith("torch.nn."):
            raise CheckpointError(f"{path}: activation {activation!r} is not a torch.nn module; it cannot be exported.")
        return cls(path=folder, in_features=positive_int(config, "in_features", path),
                   out_features=positive_int(config, "out_features", path), bias=bool(config.get("bias", True)),
                   activation=activation, weights=weights_file(folder, context.allow_pickle))

    def output_dimension(self, input_dimension: int, where: str) -> int:
        if self.in_features != input_dimension:
            raise CheckpointError(f"{where}: {self.describe()} in {self.path} expects {self.in_features} inputs "
                                  f"but receives {input_dimension}.")
        return self.out_features

    def describe(self) -> str:
        return f"Dense({self.in_features}->{self.out_features}, {self.activation.rsplit('.', 1)[-1]})"

    def build(self) -> nn.Module:
        return dense_class()(self)


def _activation(name: str, where: str) -> nn.Module:
    """An instance of the torch.nn class the config names; anything else is a `CheckpointError`."""
    from torch import nn

    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{where}: activation {name!r} does not exist in this torch.") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{where}: activation {name!r} is not a torch.nn.Module class.")
    return cls()


@functools.cache
def dense_class() -> type[nn.Module]:
    """`DenseModule`, defined on first use so that reading configs never imports torch."""
    from torch import Tensor, nn

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

    return DenseModule
