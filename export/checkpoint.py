"""Reading a sentence-transformers checkpoint folder into a `CheckpointSpec`.

Only configuration files are read here; no weights are loaded and torch is not imported. Like
sentence-transformers' own modules, each supported module kind is one type in one file of
`export/modules/` that reads its config, knows its output dimension, describes itself for the
manifest and builds its PyTorch module. `MODULE_TYPES` maps each sentence-transformers class name
to its type; anything else is refused with an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .modules.base import CheckpointError, HeadStep, ReadContext, read_json, read_object
from .modules.dense import DenseConfig
from .modules.head import HeadConfig, RouterConfig
from .modules.normalize import NormalizeConfig
from .modules.pooling import PoolingConfig
from .modules.transformer import TransformerConfig

ST_CONFIG = "config_sentence_transformers.json"

# The one table of supported sentence-transformers modules, by class name (any version's module path).
MODULE_TYPES: dict[str, type] = {
    "Transformer": TransformerConfig,
    "Pooling": PoolingConfig,
    "Dense": DenseConfig,
    "Normalize": NormalizeConfig,
    "Asym": RouterConfig,
    "Router": RouterConfig,
}


@dataclass
class Prompts:
    """`config_sentence_transformers.json`'s prompts: texts prepended to the input, by name."""

    texts: dict[str, str] = field(default_factory=dict)
    default_name: str | None = None

    @classmethod
    def read(cls, root: Path) -> Prompts:
        path = root / ST_CONFIG
        if not path.is_file():
            return cls()
        config = read_object(path)
        texts = config.get("prompts") or {}
        if not isinstance(texts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in texts.items()):
            raise CheckpointError(f"{path}: prompts must map names to strings.")
        default = config.get("default_prompt_name") or None
        if default is not None and default not in texts:
            raise CheckpointError(f"{path}: default_prompt_name {default!r} is not one of the prompts {sorted(texts)}.")
        return cls(texts, default)


@dataclass
class CheckpointSpec:
    root: Path
    transformer: TransformerConfig
    pooling: PoolingConfig
    heads: dict[str, HeadConfig]
    default_head: str
    # The module kind that produced the heads: "Asym", "Router" or None.
    router_kind: str | None = None
    prompts: Prompts = field(default_factory=Prompts)


def read_checkpoint(root: str | Path, allow_pickle: bool = False) -> CheckpointSpec:
    """Describe a local sentence-transformers folder, refusing what cannot be exported."""
    root = Path(root)
    context = ReadContext(root, allow_pickle, MODULE_TYPES)
    modules_path = root / "modules.json"
    entries = read_json(modules_path)
    if not isinstance(entries, list) or not entries or not all(isinstance(m, dict) for m in entries):
        raise CheckpointError(f"{modules_path}: expected a non-empty list of module objects.")
    entries = sorted(entries, key=lambda m: m.get("idx", 0) if isinstance(m.get("idx", 0), int) else 0)
    kinds = [str(m.get("type")).rsplit(".", 1)[-1] for m in entries]
    if len(kinds) < 2 or kinds[:2] != ["Transformer", "Pooling"]:
        raise CheckpointError(f"{modules_path}: expected Transformer -> Pooling first, found {' -> '.join(kinds)}.")
    modules = []
    for entry in entries:
        where = f"{modules_path} module {entry.get('idx')}"
        folder = context.inside(root / str(entry.get("path", "")), where)
        modules.append(context.read_module(str(entry.get("type")), folder, where))
    transformer, pooling = modules[0], modules[1]

    before: list[HeadStep] = []
    after: list[HeadStep] = []
    router: RouterConfig | None = None
    router_kind = None
    for kind, module in zip(kinds[2:], modules[2:]):
        if module.role == "router":
            if router is not None:
                raise CheckpointError(f"{modules_path}: more than one {'/'.join(context.kinds('router'))} module.")
            router, router_kind = module, kind
        elif module.role == "head":
            (after if router is not None else before).append(module)
        else:
            raise CheckpointError(f"{modules_path}: a {kind} module after pooling is not supported "
                                  f"(only {', '.join(context.kinds('head'))} and {'/'.join(context.kinds('router'))}).")
    routes = router.routes if router is not None else {"default": []}
    heads = {name: HeadConfig(name, [*before, *steps, *after]) for name, steps in routes.items()}
    for head in heads.values():
        head.output_dimension(pooling.output_dimension)  # raises on shape mismatch
    if pooling.dimension != transformer.hidden_size:
        raise CheckpointError(f"{root / entries[1].get('path', '')}/config.json: pooling dimension {pooling.dimension} "
                              f"differs from the encoder's hidden size {transformer.hidden_size}.")
    return CheckpointSpec(root, transformer, pooling, heads, router.default_route if router else "default",
                          router_kind, Prompts.read(root))
