"""What follows pooling: a head (one route's steps, the identity when empty), and the routers
that name several heads, Asym (legacy) and Router (sentence-transformers >= 5)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from .base import CheckpointError, HeadStep, ReadContext, read_object

if TYPE_CHECKING:
    from torch import nn


@dataclass
class RouterConfig:
    """Named routes of head steps, one per input kind (JobBERT: `anchor` titles, `positive` skills)."""

    role: ClassVar[str] = "router"
    routes: dict[str, list[HeadStep]]
    default_route: str

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> RouterConfig:
        config_path = folder / "router_config.json"
        if not config_path.is_file():
            config_path = folder / "config.json"  # the legacy Asym module
        config = read_object(config_path)
        types, structure = config.get("types"), config.get("structure")
        if not isinstance(types, dict) or not isinstance(structure, dict):
            raise CheckpointError(f"{config_path}: expected 'types' and 'structure' objects.")
        if not structure:
            raise CheckpointError(f"{config_path}: no routes.")
        routes: dict[str, list[HeadStep]] = {}
        for route, module_ids in structure.items():
            if not isinstance(module_ids, list):
                raise CheckpointError(f"{config_path}: route {route!r} must list module ids.")
            steps = []
            for module_id in module_ids:
                if not isinstance(module_id, str) or module_id not in types:
                    raise CheckpointError(f"{config_path}: route {route!r} uses {module_id!r}, which has no entry in 'types'.")
                where = f"{config_path} route {route!r}"
                sub = context.inside(folder / module_id, where)
                step = context.read_module(str(types[module_id]), sub, f"{config_path} ({module_id})")
                if step.role != "head":
                    raise CheckpointError(f"{where}: a {type(step).__name__} inside a router is not supported "
                                          f"(only {', '.join(context.kinds('head'))}).")
                steps.append(step)
            routes[route] = steps
        default = (config.get("parameters") or {}).get("default_route") or next(iter(structure))
        if default not in routes:
            raise CheckpointError(f"{config_path}: default_route {default!r} is not one of {sorted(routes)}.")
        return cls(routes=routes, default_route=default)


@dataclass
class HeadConfig:
    """What follows pooling for one route (`default` when the model has no Asym/Router)."""

    name: str
    modules: list[HeadStep] = field(default_factory=list)

    def output_dimension(self, input_dimension: int) -> int:
        dim = input_dimension
        for module in self.modules:
            dim = module.output_dimension(dim, f"head {self.name!r}")
        return dim

    def build(self) -> nn.Module:
        return head_class()(self)


@functools.cache
def head_class() -> type[nn.Module]:
    """`HeadModule`, defined on first use so that reading configs never imports torch."""
    from torch import Tensor, nn

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

    return HeadModule
