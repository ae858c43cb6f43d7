"""Request bodies of every route, validated into plain dataclasses (or an `ApiError` naming the field)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Limits
from .errors import ApiError, bad_request, too_large, unprocessable


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about the served model."""

    name: str  # the served model name (OpenAI's `model`)
    heads: dict[str, int]  # head -> dimension, in manifest order
    default_head: str
    prompts: tuple[str, ...]  # prompt names the model defines
    max_seq_length: int


@dataclass(frozen=True)
class EmbedRequest:
    texts: list[str]
    head: str
    normalize: bool
    prompt_name: str | None = None
    base64: bool = False  # OpenAI's encoding_format


@dataclass(frozen=True)
class SimilarityRequest:
    source: list[str]
    target: list[str]
    source_head: str
    target_head: str


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(body).__name__}.")
    return body


def _refuse_unknown(body: dict, known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise unprocessable(
            f"unknown field {unknown[0]!r}; this route accepts {', '.join(sorted(known))}.", unknown[0], "unknown_field"
        )


def _texts(body: dict, field: str, limits: Limits, required: bool = True) -> list[str]:
    """A str or a non-empty list of str, within the input and character limits."""
    if field not in body:
        if required:
            raise unprocessable(f"missing field {field!r}.", field, "missing_field")
        return []
    value = body[field]
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        if not value:
            raise bad_request(f"{field!r} is an empty list; send at least one text.", field, "empty_input")
        texts = value
    else:
        raise unprocessable(f"{field!r} must be a string or a list of strings, not {_kind(value)}.", field, "invalid_type")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            hint = " Token ids are not accepted: send the texts." if isinstance(text, (int, list)) else ""
            raise unprocessable(f"{field}[{index}] is {_kind(text)}; every input must be a string.{hint}", field, "invalid_type")
    if len(texts) > limits.max_inputs:
        raise too_large(
            f"{field!r} holds {len(texts)} texts; the limit is {limits.max_inputs} per request (--max-inputs).",
            field, "too_many_inputs",
        )
    for index, text in enumerate(texts):
        if len(text) > limits.max_chars:
            raise too_large(
                f"{field}[{index}] has {len(text)} characters; the limit is {limits.max_chars} (--max-chars).",
                field, "text_too_long",
            )
    return texts


def _kind(value: Any) -> str:
    return "null" if value is None else f"a JSON {type(value).__name__}".replace("dict", "object").replace("str", "string")


def _bool(body: dict, field: str, default: bool) -> bool:
    value = body.get(field, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise unprocessable(f"{field!r} must be true or false, not {_kind(value)}.", field, "invalid_type")
    return value


def _head(model: ModelInfo, value: Any, field: str) -> str:
    if value is None:
        return model.default_head
    if not isinstance(value, str) or value not in model.heads:
        raise unprocessable(
            f"unknown head {value!r}; this model has the heads {', '.join(model.heads)}.", field, "unknown_head"
        )
    return value


def _prompt(model: ModelInfo, body: dict) -> str | None:
    value = body.get("prompt_name")
    if value is None:
        return None
    if not isinstance(value, str) or value not in model.prompts:
        known = ", ".join(model.prompts) if model.prompts else "none"
        raise unprocessable(f"unknown prompt_name {value!r}; this model's prompts: {known}.", "prompt_name", "unknown_prompt")
    return value


def _dimensions(body: dict, dimension: int) -> None:
    value = body.get("dimensions")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise unprocessable(f"'dimensions' must be an integer, not {_kind(value)}.", "dimensions", "invalid_type")
    if value != dimension:
        raise unprocessable(
            f"'dimensions' is {value}, but this head outputs {dimension} and the model was not trained to be "
            "truncated; leave it out or send the head's size.",
            "dimensions", "unsupported_dimensions",
        )


# -- TEI: POST /embed ----------------------------------------------------------------------
# `encoding_format` because huggingface_hub's `feature_extraction` sends it to TEI's routes.
_EMBED_FIELDS = {"inputs", "head", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions",
                 "encoding_format"}


def parse_embed(body: Any, model: ModelInfo, limits: Limits) -> EmbedRequest:
    """TEI's `/embed`. `normalize` defaults to true, as in TEI; texts are always truncated to
    `max_seq_length` tokens (as sentence-transformers does), so `truncate: false` and a left
    `truncation_direction` are refused."""
    body = _object(body)
    _refuse_unknown(body, _EMBED_FIELDS)
    texts = _texts(body, "inputs", limits)
    head = _head(model, body.get("head"), "head")
    if body.get("truncate") is not None and _bool(body, "truncate", True) is False:
        raise unprocessable(
            f"'truncate': false is not supported: texts are always cut to the model's {model.max_seq_length} tokens, "
            "as sentence-transformers does. Leave it out or send true.",
            "truncate", "unsupported_truncate",
        )
    direction = body.get("truncation_direction")
    if direction is not None and (not isinstance(direction, str) or direction.lower() != "right"):
        raise unprocessable(
            f"'truncation_direction' {direction!r} is not supported; texts are cut on the right.",
            "truncation_direction", "unsupported_truncation_direction",
        )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding != "float":
        raise unprocessable(
            f"'encoding_format' {encoding!r} is not supported on this route: it answers JSON arrays of floats. "
            "Leave it out, send 'float', or use /v1/embeddings for 'base64'.",
            "encoding_format", "invalid_encoding_format",
        )
    _dimensions(body, model.heads[head])
    return EmbedRequest(texts, head, _bool(body, "normalize", True), _prompt(model, body))


# -- OpenAI: POST /v1/embeddings, /embeddings -------------------------------------------------
_OPENAI_FIELDS = {"input", "model", "encoding_format", "dimensions", "user", "head", "normalize", "prompt_name"}


def parse_openai(body: Any, model: ModelInfo, limits: Limits) -> EmbedRequest:
    """OpenAI's embeddings request. `model` is the served name or `NAME/HEAD`; a `head` field also
    works. Vectors are unit length unless `normalize` is false, as OpenAI's are."""
    body = _object(body)
    _refuse_unknown(body, _OPENAI_FIELDS)
    texts = _texts(body, "input", limits)
    head = model_head(model, body.get("model"))
    if body.get("head") is not None:
        named = _head(model, body["head"], "head")
        if "model" in body and body["model"] != model.name and named != head:
            raise unprocessable(
                f"'model' {body['model']!r} picks the head {head!r} but 'head' is {named!r}; send one of them.",
                "head", "conflicting_head",
            )
        head = named
    encoding = body.get("encoding_format", "float")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise unprocessable(
            f"'encoding_format' must be 'float' or 'base64', not {encoding!r}.", "encoding_format", "invalid_encoding_format"
        )
    _dimensions(body, model.heads[head])
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise unprocessable("'user' must be a string.", "user", "invalid_type")
    return EmbedRequest(texts, head, _bool(body, "normalize", True), _prompt(model, body), encoding == "base64")


def model_head(model: ModelInfo, value: Any) -> str:
    """The head that an OpenAI `model` value names: the served name (default head) or `NAME/HEAD`."""
    if value is None or value == model.name:
        return model.default_head
    if isinstance(value, str) and value.startswith(model.name + "/") and value[len(model.name) + 1 :] in model.heads:
        return value[len(model.name) + 1 :]
    served = ", ".join([model.name, *(f"{model.name}/{h}" for h in model.heads)])
    raise ApiError(422, f"unknown model {value!r}; this server serves {served}.", "model_not_found", "model")


# -- POST /similarity ------------------------------------------------------------------------
_SIMILARITY_FIELDS = {"source", "target", "source_head", "target_head"}


def parse_similarity(body: Any, model: ModelInfo, limits: Limits) -> SimilarityRequest:
    body = _object(body)
    _refuse_unknown(body, _SIMILARITY_FIELDS)
    source = _texts(body, "source", limits)
    target = _texts(body, "target", limits)
    if len(source) + len(target) > limits.max_inputs:
        raise too_large(
            f"'source' and 'target' hold {len(source) + len(target)} texts together; the limit is "
            f"{limits.max_inputs} per request (--max-inputs).",
            "target", "too_many_inputs",
        )
    source_head = _head(model, body.get("source_head"), "source_head")
    target_head = _head(model, body.get("target_head"), "target_head")
    if model.heads[source_head] != model.heads[target_head]:
        raise unprocessable(
            f"heads {source_head!r} ({model.heads[source_head]}) and {target_head!r} ({model.heads[target_head]}) "
            "have different sizes; their vectors cannot be compared.",
            "target_head", "incompatible_heads",
        )
    return SimilarityRequest(source, target, source_head, target_head)


# -- POST /tokenize --------------------------------------------------------------------------
_TOKENIZE_FIELDS = {"inputs", "add_special_tokens"}


def parse_tokenize(body: Any, limits: Limits) -> list[str]:
    body = _object(body)
    _refuse_unknown(body, _TOKENIZE_FIELDS)
    if body.get("add_special_tokens") is False:
        raise unprocessable(
            "'add_special_tokens': false is not supported; the ids are what the model receives.",
            "add_special_tokens", "unsupported_value",
        )
    return _texts(body, "inputs", limits)


# -- what each parser accepts, described for the OpenAPI document (serve.openapi) ---------------------
# Declarative only: validation above does not read these. The field sets are the parsers' own.
@dataclass(frozen=True)
class RequestShape:
    """A request body: its name in the OpenAPI document, its fields and which of them are required."""

    name: str
    summary: str
    fields: set[str]
    required: tuple[str, ...]


REQUEST_SHAPES: dict[Any, RequestShape] = {
    parse_embed: RequestShape("EmbedRequest", "TEI's /embed request", _EMBED_FIELDS, ("inputs",)),
    parse_openai: RequestShape("OpenAIEmbeddingsRequest", "OpenAI's embeddings request", _OPENAI_FIELDS, ("input",)),
    parse_similarity: RequestShape("SimilarityRequest", "texts against texts", _SIMILARITY_FIELDS, ("source", "target")),
    parse_tokenize: RequestShape("TokenizeRequest", "texts to tokenize", _TOKENIZE_FIELDS, ("inputs",)),
}

# field -> (kind, description). serve.openapi turns each kind into JSON Schema for the served model:
# texts (a string or a non-empty list of strings), head, prompt, dimensions, model, boolean,
# true (true or absent), right ("right" in any case, or absent), encoding, string.
FIELD_DOCS: dict[str, tuple[str, str]] = {
    "inputs": ("texts", "A text or a list of texts."),
    "input": ("texts", "A text or a list of texts. Token ids are not accepted."),
    "source": ("texts", "The texts of the rows."),
    "target": ("texts", "The texts of the columns."),
    "head": ("head", "The head to embed with (default: the model's default head)."),
    "source_head": ("head", "The head for `source` (default: the model's default head)."),
    "target_head": ("head", "The head for `target`; its size must match `source_head`'s."),
    "normalize": ("boolean", "Unit-length vectors (default true)."),
    "truncate": ("true", "Texts are always cut to the model's max_seq_length tokens; false is refused."),
    "truncation_direction": ("right", "Texts are cut on the right; 'left' is refused."),
    "prompt_name": ("prompt", "A prompt the model defines, prepended to every text."),
    "dimensions": ("dimensions", "Must be absent or the head's size: the model was not trained to be truncated."),
    "model": ("model", "The served name, or NAME/HEAD for another head."),
    "encoding_format": ("encoding", "'float' (default) or 'base64' (little-endian float32)."),
    "user": ("string", "Accepted and ignored."),
    "add_special_tokens": ("true", "Special tokens are always added (the ids the model receives); false is refused."),
}
