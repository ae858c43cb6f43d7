"""Reading a sentence-transformers checkpoint folder into a `CheckpointSpec`.

Only configuration files are read here; no weights are loaded. Like sentence-transformers'
own modules, each supported module is one self-describing type: it reads its config, knows its
output dimension, builds its PyTorch module (`export/torch_modules.py`, one class per type) and
describes itself for the manifest. `MODULE_TYPES` maps each sentence-transformers class name to
its type; anything else is refused with an error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from jobbert_onnx.runtime.errors import JobbertOnnxError

if TYPE_CHECKING:  # torch is imported only when a module is built
    from torch import nn


class CheckpointError(JobbertOnnxError):
    """The checkpoint cannot be exported as it is (unsupported module, bad config, pickled weights)."""


SAFE_WEIGHTS = "model.safetensors"
PICKLED_WEIGHTS = "pytorch_model.bin"
ST_CONFIG = "config_sentence_transformers.json"


@dataclass(frozen=True)
class ReadContext:
    """What every module reader needs besides its own folder."""

    root: Path
    allow_pickle: bool

    def inside(self, folder: Path, where: str) -> Path:
        """`folder`, resolved, refused unless it stays inside the checkpoint (a module path is untrusted)."""
        resolved = folder.resolve()
        root = self.root.resolve()
        if resolved != root and root not in resolved.parents:
            raise CheckpointError(f"{where}: module folder {folder} leaves the checkpoint {self.root}.")
        return resolved


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc}).") from exc


def _read_object(path: Path) -> dict[str, Any]:
    config = _read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object.")
    return config


def _positive_int(config: dict[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: {key!r} must be a positive integer, got {value!r}.")
    return value


def _weights_file(folder: Path, allow_pickle: bool) -> Path:
    """The weights of a module folder: safetensors, or a pickle only when explicitly allowed."""
    if (folder / SAFE_WEIGHTS).is_file():
        return folder / SAFE_WEIGHTS
    if (folder / PICKLED_WEIGHTS).is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{folder / PICKLED_WEIGHTS}: weights are a pickle, and unpickling can run arbitrary code. "
                "Convert them to safetensors, or pass --allow-pickle if you trust this checkpoint."
            )
        return folder / PICKLED_WEIGHTS
    raise CheckpointError(f"{folder}: no weights found (expected {SAFE_WEIGHTS} or {PICKLED_WEIGHTS}).")


class HeadModuleConfig(Protocol):
    """A module after pooling (Dense, Normalize): what every head step must provide."""

    def output_dimension(self, input_dimension: int, where: str) -> int: ...
    def describe(self) -> str: ...
    def build(self) -> nn.Module: ...


# -- the encoder ---------------------------------------------------------------------------
@dataclass
class TransformerConfig:
    """The encoder: a Hugging Face model folder plus sentence-transformers' tokenization settings."""

    role: ClassVar[str] = "encoder"
    path: Path
    max_seq_length: int
    do_lower_case: bool
    model_type: str
    hidden_size: int
    weights: Path
    num_heads: int | None = None  # attention heads, for onnxruntime's fusions (None: not fused)

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> "TransformerConfig":
        st_config_path = folder / "sentence_bert_config.json"
        st_config = _read_object(st_config_path) if st_config_path.is_file() else {}
        hf_config = _read_object(folder / "config.json")
        max_len = st_config.get("max_seq_length")
        if max_len is None:
            # Same fallback as sentence-transformers: the tokenizer's limit, capped by the position table.
            tok_config_path = folder / "tokenizer_config.json"
            tok_limit = _read_object(tok_config_path).get("model_max_length") if tok_config_path.is_file() else None
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
                   weights=_weights_file(folder, context.allow_pickle), num_heads=heads)

    def build(self, tokenizer_outputs: list[str]) -> nn.Module:
        from .torch_modules import EncoderModule

        return EncoderModule(self, tokenizer_outputs)


# -- pooling -------------------------------------------------------------------------------
# Pooling modes, in the order sentence-transformers concatenates them, with the legacy boolean
# key of `1_Pooling/config.json` that selects each. Each mode's computation is
# `torch_modules.POOLING_FUNCTIONS[mode]`.
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
    def read(cls, folder: Path, context: ReadContext) -> "PoolingConfig":
        path = folder / "config.json"
        config = _read_object(path)
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
        return cls(modes=modes, dimension=_positive_int(config, key, path), include_prompt=include_prompt)

    @property
    def output_dimension(self) -> int:
        return self.dimension * len(self.modes)

    def build(self) -> nn.Module:
        from .torch_modules import PoolingModule

        return PoolingModule(self)


# -- modules after pooling -----------------------------------------------------------------
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
    def read(cls, folder: Path, context: ReadContext) -> "DenseConfig":
        path = folder / "config.json"
        config = _read_object(path)
        for key in ("module_input_name", "module_output_name"):
            if config.get(key, "sentence_embedding") != "sentence_embedding":
                raise CheckpointError(f"{path}: Dense on {config[key]!r} is not supported; only on the sentence embedding.")
        activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if not isinstance(activation, str) or not activation.startswith("torch.nn."):
            raise CheckpointError(f"{path}: activation {activation!r} is not a torch.nn module; it cannot be exported.")
        return cls(path=folder, in_features=_positive_int(config, "in_features", path),
                   out_features=_positive_int(config, "out_features", path), bias=bool(config.get("bias", True)),
                   activation=activation, weights=_weights_file(folder, context.allow_pickle))

    def output_dimension(self, input_dimension: int, where: str) -> int:
        if self.in_features != input_dimension:
            raise CheckpointError(f"{where}: {self.describe()} in {self.path} expects {self.in_features} inputs "
                                  f"but receives {input_dimension}.")
        return self.out_features

    def describe(self) -> str:
        return f"Dense({self.in_features}->{self.out_features}, {self.activation.rsplit('.', 1)[-1]})"

    def build(self) -> nn.Module:
        from .torch_modules import DenseModule

        return DenseModule(self)


@dataclass
class NormalizeConfig:
    role: ClassVar[str] = "head"

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> "NormalizeConfig":
        return cls()

    def output_dimension(self, input_dimension: int, where: str) -> int:
        return input_dimension

    def describe(self) -> str:
        return "Normalize"

    def build(self) -> nn.Module:
        from .torch_modules import NormalizeModule

        return NormalizeModule()


# -- routers: Asym (legacy) and Router (sentence-transformers >= 5) ---------------------------
@dataclass
class RouterConfig:
    """Named routes of head modules, one per input kind (JobBERT: `anchor` titles, `positive` skills)."""

    role: ClassVar[str] = "router"
    routes: dict[str, list[HeadModuleConfig]]
    default_route: str

    @classmethod
    def read(cls, folder: Path, context: ReadContext) -> "RouterConfig":
        config_path = folder / "router_config.json"
        if not config_path.is_file():
            config_path = folder / "config.json"  # the legacy Asym module
        config = _read_object(config_path)
        types, structure = config.get("types"), config.get("structure")
        if not isinstance(types, dict) or not isinstance(structure, dict):
            raise CheckpointError(f"{config_path}: expected 'types' and 'structure' objects.")
        if not structure:
            raise CheckpointError(f"{config_path}: no routes.")
        routes: dict[str, list[HeadModuleConfig]] = {}
        for route, module_ids in structure.items():
            if not isinstance(module_ids, list):
                raise CheckpointError(f"{config_path}: route {route!r} must list module ids.")
            steps = []
            for module_id in module_ids:
                if not isinstance(module_id, str) or module_id not in types:
                    raise CheckpointError(f"{config_path}: route {route!r} uses {module_id!r}, which has no entry in 'types'.")
                where = f"{config_path} route {route!r}"
                sub = context.inside(folder / module_id, where)
                step = read_module(str(types[module_id]), sub, context, f"{config_path} ({module_id})")
                if step.role != "head":
                    raise CheckpointError(f"{where}: a {type(step).__name__} inside a router is not supported "
                                          f"(only {', '.join(_kinds('head'))}).")
                steps.append(step)
            routes[route] = steps
        default = (config.get("parameters") or {}).get("default_route") or next(iter(structure))
        if default not in routes:
            raise CheckpointError(f"{config_path}: default_route {default!r} is not one of {sorted(routes)}.")
        return cls(routes=routes, default_route=default)


# The one table of supported sentence-transformers modules, by class name (any version's module path).
MODULE_TYPES: dict[str, type] = {
    "Transformer": TransformerConfig,
    "Pooling": PoolingConfig,
    "Dense": DenseConfig,
    "Normalize": NormalizeConfig,
    "Asym": RouterConfig,
    "Router": RouterConfig,
}


def _kinds(role: str) -> list[str]:
    return [name for name, cls in MODULE_TYPES.items() if cls.role == role]


def read_module(type_name: str, folder: Path, context: ReadContext, where: str):
    """Read one module folder with the type registered for `type_name` (a sentence-transformers class path)."""
    kind = type_name.rsplit(".", 1)[-1]
    if not type_name.startswith("sentence_transformers.") or kind not in MODULE_TYPES:
        raise CheckpointError(f"{where}: unsupported module {type_name!r}. Supported: sentence-transformers "
                              f"{', '.join(sorted(MODULE_TYPES))}.")
    return MODULE_TYPES[kind].read(folder, context)


# -- the whole checkpoint ------------------------------------------------------------------
@dataclass
class HeadConfig:
    """What follows pooling for one route (`default` when the model has no Asym/Router)."""

    name: str
    modules: list[HeadModuleConfig] = field(default_factory=list)

    def output_dimension(self, input_dimension: int) -> int:
        dim = input_dimension
        for module in self.modules:
            dim = module.output_dimension(dim, f"head {self.name!r}")
        return dim

    def build(self) -> nn.Module:
        from .torch_modules import HeadModule

        return HeadModule(self)


@dataclass
class Prompts:
    """`config_sentence_transformers.json`'s prompts: texts prepended to the input, by name."""

    texts: dict[str, str] = field(default_factory=dict)
    default_name: str | None = None

    @classmethod
    def read(cls, root: Path) -> "Prompts":
        path = root / ST_CONFIG
        if not path.is_file():
            return cls()
        config = _read_object(path)
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
    context = ReadContext(root, allow_pickle)
    modules_path = root / "modules.json"
    entries = _read_json(modules_path)
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
        modules.append(read_module(str(entry.get("type")), folder, context, where))
    transformer, pooling = modules[0], modules[1]

    before: list[HeadModuleConfig] = []
    after: list[HeadModuleConfig] = []
    router: RouterConfig | None = None
    router_kind = None
    for kind, module in zip(kinds[2:], modules[2:]):
        if module.role == "router":
            if router is not None:
                raise CheckpointError(f"{modules_path}: more than one {'/'.join(_kinds('router'))} module.")
            router, router_kind = module, kind
        elif module.role == "head":
            (after if router is not None else before).append(module)
        else:
            raise CheckpointError(f"{modules_path}: a {kind} module after pooling is not supported "
                                  f"(only {', '.join(_kinds('head'))} and {'/'.join(_kinds('router'))}).")
    routes = router.routes if router is not None else {"default": []}
    heads = {name: HeadConfig(name, [*before, *steps, *after]) for name, steps in routes.items()}
    for head in heads.values():
        head.output_dimension(pooling.output_dimension)  # raises on shape mismatch
    if pooling.dimension != transformer.hidden_size:
        raise CheckpointError(f"{root / entries[1].get('path', '')}/config.json: pooling dimension {pooling.dimension} "
                              f"differs from the encoder's hidden size {transformer.hidden_size}.")
    return CheckpointSpec(root, transformer, pooling, heads, router.default_route if router else "default",
                          router_kind, Prompts.read(root))
