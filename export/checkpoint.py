"""Reading a sentence-transformers checkpoint folder into a `CheckpointSpec`.

Only configuration files are read here; no weights are loaded. Every supported module is
described by a small dataclass, and anything else is refused with an error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from jobbert_onnx.runtime.errors import JobbertOnnxError


class CheckpointError(JobbertOnnxError):
    """The checkpoint cannot be exported as it is (unsupported module, bad config, pickled weights)."""


# Legacy boolean keys of `1_Pooling/config.json`, in the order sentence-transformers concatenates them.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(LEGACY_POOLING_KEYS.values())
SAFE_WEIGHTS = "model.safetensors"
PICKLED_WEIGHTS = "pytorch_model.bin"


@dataclass
class TransformerSpec:
    """The encoder: a Hugging Face model folder plus sentence-transformers' tokenization settings."""

    path: Path
    max_seq_length: int
    do_lower_case: bool
    model_type: str
    hidden_size: int
    weights: Path


@dataclass
class PoolingSpec:
    modes: list[str]
    dimension: int

    @property
    def output_dimension(self) -> int:
        return self.dimension * len(self.modes)


@dataclass
class DenseSpec:
    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str
    weights: Path

    def describe(self) -> str:
        return f"Dense({self.in_features}->{self.out_features}, {self.activation.rsplit('.', 1)[-1]})"


@dataclass
class NormalizeSpec:
    def describe(self) -> str:
        return "Normalize"


HeadStep = Union[DenseSpec, NormalizeSpec]


@dataclass
class HeadSpec:
    """What follows pooling for one route (`default` when the model has no Asym/Router)."""

    name: str
    modules: list[HeadStep] = field(default_factory=list)

    def output_dimension(self, input_dimension: int) -> int:
        dim = input_dimension
        for module in self.modules:
            if isinstance(module, DenseSpec):
                if module.in_features != dim:
                    raise CheckpointError(
                        f"head {self.name!r}: {module.describe()} in {module.path} expects {module.in_features} "
                        f"inputs but receives {dim}."
                    )
                dim = module.out_features
        return dim


@dataclass
class CheckpointSpec:
    root: Path
    transformer: TransformerSpec
    pooling: PoolingSpec
    heads: dict[str, HeadSpec]
    default_head: str
    # The module kind that produced the heads: "Asym", "Router" or None.
    router_kind: str | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc}).") from exc


def _module_kind(type_name: str, where: str) -> str:
    """Map a sentence-transformers class path (any version's spelling) to its class name."""
    kind = type_name.rsplit(".", 1)[-1]
    supported = {"Transformer", "Pooling", "Dense", "Normalize", "Asym", "Router"}
    if not type_name.startswith("sentence_transformers.") or kind not in supported:
        raise CheckpointError(
            f"{where}: unsupported module {type_name!r}. Supported: sentence-transformers "
            f"{', '.join(sorted(supported))}."
        )
    return kind


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


def _read_transformer(folder: Path, allow_pickle: bool) -> TransformerSpec:
    st_config_path = folder / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    hf_config = _read_json(folder / "config.json")
    max_len = st_config.get("max_seq_length")
    if max_len is None:
        # Same fallback as sentence-transformers: the tokenizer's limit, capped by the position table.
        tok_config_path = folder / "tokenizer_config.json"
        tok_limit = _read_json(tok_config_path).get("model_max_length") if tok_config_path.is_file() else None
        candidates = [v for v in (tok_limit, hf_config.get("max_position_embeddings")) if isinstance(v, int) and v < 10**6]
        if not candidates:
            raise CheckpointError(f"{st_config_path}: no max_seq_length, and none can be derived from the tokenizer.")
        max_len = min(candidates)
    hidden = hf_config.get("hidden_size") or hf_config.get("d_model")
    if not isinstance(hidden, int):
        raise CheckpointError(f"{folder / 'config.json'}: no hidden_size.")
    return TransformerSpec(
        path=folder,
        max_seq_length=int(max_len),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        model_type=str(hf_config.get("model_type", "unknown")),
        hidden_size=hidden,
        weights=_weights_file(folder, allow_pickle),
    )


def _read_pooling(folder: Path) -> PoolingSpec:
    config = _read_json(folder / "config.json")
    if "pooling_mode" in config:  # sentence-transformers >= 6
        raw = config["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw)
    else:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)]
    unknown = [m for m in modes if m not in POOLING_MODES]
    if not modes or unknown:
        raise CheckpointError(
            f"{folder / 'config.json'}: unsupported pooling mode {unknown or 'none'}; supported: {', '.join(POOLING_MODES)}."
        )
    dimension = config.get("word_embedding_dimension", config.get("embedding_dimension"))
    if not isinstance(dimension, int):
        raise CheckpointError(f"{folder / 'config.json'}: no word_embedding_dimension.")
    return PoolingSpec(modes=modes, dimension=dimension)


def _read_dense(folder: Path, allow_pickle: bool) -> DenseSpec:
    config = _read_json(folder / "config.json")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise CheckpointError(
                f"{folder / 'config.json'}: Dense on {config[key]!r} is not supported; only on the sentence embedding."
            )
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if not isinstance(activation, str) or not activation.startswith("torch.nn."):
        raise CheckpointError(
            f"{folder / 'config.json'}: activation {activation!r} is not a torch.nn module; it cannot be exported."
        )
    try:
        return DenseSpec(
            path=folder,
            in_features=int(config["in_features"]),
            out_features=int(config["out_features"]),
            bias=bool(config.get("bias", True)),
            activation=activation,
            weights=_weights_file(folder, allow_pickle),
        )
    except KeyError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: missing {exc.args[0]!r}.") from None


def _read_head_module(kind: str, folder: Path, allow_pickle: bool, where: str) -> HeadStep:
    if kind == "Dense":
        return _read_dense(folder, allow_pickle)
    if kind == "Normalize":
        return NormalizeSpec()
    raise CheckpointError(f"{where}: a {kind} module after pooling is not supported (only Dense and Normalize).")


def _read_router(folder: Path, allow_pickle: bool) -> tuple[dict[str, list[HeadStep]], str]:
    """Routes of an Asym (legacy `config.json`) or Router (`router_config.json`) module, and the default."""
    config_path = folder / "router_config.json"
    if not config_path.is_file():
        config_path = folder / "config.json"
    config = _read_json(config_path)
    try:
        types: dict[str, str] = config["types"]
        structure: dict[str, list[str]] = config["structure"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{config_path}: expected 'types' and 'structure' keys.") from None
    if not structure:
        raise CheckpointError(f"{config_path}: no routes.")
    routes: dict[str, list[HeadStep]] = {}
    for route, module_ids in structure.items():
        modules = []
        for module_id in module_ids:
            if module_id not in types:
                raise CheckpointError(f"{config_path}: route {route!r} uses {module_id!r}, which has no entry in 'types'.")
            sub = (folder / module_id).resolve()
            if folder.resolve() not in sub.parents:
                raise CheckpointError(f"{config_path}: module folder {module_id!r} leaves the checkpoint.")
            sub_kind = _module_kind(types[module_id], f"{config_path} ({module_id})")
            modules.append(_read_head_module(sub_kind, sub, allow_pickle, f"{config_path} route {route!r}"))
        routes[route] = modules
    default = (config.get("parameters") or {}).get("default_route") or next(iter(structure))
    if default not in routes:
        raise CheckpointError(f"{config_path}: default_route {default!r} is not one of {sorted(routes)}.")
    return routes, default


def _refuse_default_prompt(root: Path) -> None:
    # sentence-transformers prepends a default prompt to every text; the runtime does not.
    path = root / "config_sentence_transformers.json"
    if path.is_file() and _read_json(path).get("default_prompt_name"):
        raise CheckpointError(f"{path}: default_prompt_name is set; models with prompts are not supported.")


def read_checkpoint(root: str | Path, allow_pickle: bool = False) -> CheckpointSpec:
    """Describe a local sentence-transformers folder, refusing what cannot be exported."""
    root = Path(root)
    modules = _read_json(root / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise CheckpointError(f"{root / 'modules.json'}: expected a non-empty list of modules.")
    entries = sorted(modules, key=lambda m: m.get("idx", 0))
    kinds = [(_module_kind(str(m.get("type")), f"{root / 'modules.json'} module {m.get('idx')}"), root / m.get("path", ""))
             for m in entries]
    if len(kinds) < 2 or kinds[0][0] != "Transformer" or kinds[1][0] != "Pooling":
        order = " -> ".join(k for k, _ in kinds)
        raise CheckpointError(f"{root / 'modules.json'}: expected Transformer -> Pooling first, found {order}.")
    _refuse_default_prompt(root)
    transformer = _read_transformer(kinds[0][1], allow_pickle)
    pooling = _read_pooling(kinds[1][1])

    before: list[HeadStep] = []
    after: list[HeadStep] = []
    routes: dict[str, list[HeadStep]] | None = None
    default, router_kind = "default", None
    for kind, folder in kinds[2:]:
        if kind in ("Asym", "Router"):
            if routes is not None:
                raise CheckpointError(f"{root / 'modules.json'}: more than one Asym/Router module.")
            routes, default = _read_router(folder, allow_pickle)
            router_kind = kind
        else:
            (after if routes is not None else before).append(
                _read_head_module(kind, folder, allow_pickle, f"{root / 'modules.json'} ({folder.name})")
            )
    routes = routes if routes is not None else {"default": []}
    heads = {name: HeadSpec(name, [*before, *mods, *after]) for name, mods in routes.items()}
    for head in heads.values():
        head.output_dimension(pooling.output_dimension)  # raises on shape mismatch
    if pooling.dimension != transformer.hidden_size:
        raise CheckpointError(
            f"{kinds[1][1] / 'config.json'}: pooling dimension {pooling.dimension} differs from the encoder's "
            f"hidden size {transformer.hidden_size}."
        )
    return CheckpointSpec(root, transformer, pooling, heads, default, router_kind)
