"""The server's OpenAPI 3.1 document (TEI serves its own at /api-doc/openapi.json).

Built, not written: the paths from `app.ROUTES`, each request body from the field set of the
parser its handler calls (`schemas.REQUEST_SHAPES`) with the fields' kinds and descriptions from
`schemas.FIELD_DOCS`, and the served model's heads, prompts and sizes and the limits filled in.
A field added to a parser therefore appears here (and a test fails until it has a description).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .config import Limits
from .schemas import FIELD_DOCS, REQUEST_SHAPES, ModelInfo, RequestShape

VERSION = "0.1.0"


def request_shape(handler: Callable[..., Any]) -> RequestShape | None:
    """The request body of `handler`: the shape of the parser it calls (None for routes without a body).

    The parser is found among the global names the handler's code uses, so that the route table
    stays the one place that ties paths to handlers.
    """
    names = set(getattr(getattr(handler, "__code__", None), "co_names", ()))
    return next((shape for parser, shape in REQUEST_SHAPES.items() if parser.__name__ in names), None)


def _field_schema(kind: str, model: ModelInfo, limits: Limits) -> dict[str, Any]:
    """JSON Schema for one kind of field (see `schemas.FIELD_DOCS`), for this model and these limits."""
    nullable = lambda values: {"enum": [*values, None]}  # noqa: E731  absent and null mean the default
    if kind == "texts":
        return {"$ref": "#/components/schemas/Texts"}
    if kind == "head":
        return nullable(model.heads)
    if kind == "prompt":
        return nullable(model.prompts)
    if kind == "dimensions":
        return nullable(sorted(set(model.heads.values())))
    if kind == "model":
        return nullable([model.name, *(f"{model.name}/{head}" for head in model.heads)])
    if kind == "encoding":
        return nullable(["float", "base64"])
    if kind == "boolean":
        return {"type": ["boolean", "null"], "default": True}
    if kind == "true":
        return nullable([True])
    if kind == "right":
        return {"type": ["string", "null"], "pattern": "^[Rr][Ii][Gg][Hh][Tt]$"}
    if kind == "string":
        return {"type": ["string", "null"]}
    raise ValueError(f"unknown field kind {kind!r} in schemas.FIELD_DOCS")


def _request_schema(shape: RequestShape, model: ModelInfo, limits: Limits) -> dict[str, Any]:
    properties = {}
    for name in sorted(shape.fields):
        if name not in FIELD_DOCS:
            raise ValueError(f"field {name!r} of {shape.name} has no entry in schemas.FIELD_DOCS")
        kind, description = FIELD_DOCS[name]
        properties[name] = {**_field_schema(kind, model, limits), "description": description}
    return {
        "type": "object",
        "description": f"{shape.summary}; unknown fields are refused (422).",
        "properties": properties,
        "required": list(shape.required),
        "additionalProperties": False,
    }


def _example(shape: RequestShape) -> dict[str, Any]:
    texts = {"inputs": ["Software Engineer"], "input": ["Software Engineer"],
             "source": ["Data Scientist"], "target": ["Python, SQL, statistics"]}
    return {name: texts[name] for name in shape.required}


def _components(model: ModelInfo, limits: Limits) -> dict[str, Any]:
    text = {"type": "string", "maxLength": limits.max_chars}
    vector = {"type": "array", "items": {"type": "number"}}
    schemas: dict[str, Any] = {
        "Texts": {
            "description": f"At most {limits.max_inputs} texts of at most {limits.max_chars} characters each.",
            "oneOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_inputs}],
        },
        "Matrix": {"type": "array", "items": vector, "description": "One row per text (or per source text)."},
        "OpenAIEmbeddings": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                                   "embedding": {"oneOf": [vector, {"type": "string", "contentEncoding": "base64"}]}},
                }},
                "model": {"type": "string"},
                "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                           "total_tokens": {"type": "integer"}}},
            },
        },
        "Tokens": {"type": "array", "items": {"type": "object", "properties": {
            "ids": {"type": "array", "items": {"type": "integer"}}, "count": {"type": "integer"}}}},
        "Models": {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
            "type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}}}},
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Object": {"type": "object"},
        "Error": {"type": "object", "required": ["error", "error_type"],
                  "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object",
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
        }}},
    }
    for shape in REQUEST_SHAPES.values():
        schemas[shape.name] = _request_schema(shape, model, limits)
    return {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}


# handler name -> (what a 200 holds, its schema); handlers not named here get a plain object
_ANSWERS: dict[str, tuple[str, str]] = {
    "embed_tei": ("the vectors, one row per text", "Matrix"),
    "embed_openai": ("OpenAI's list of embeddings", "OpenAIEmbeddings"),
    "similarity_route": ("the cosine matrix, source rows x target columns", "Matrix"),
    "tokenize_route": ("the ids the model receives, per text", "Tokens"),
    "info_route": ("the model, the artifact's sha256 and every limit", "Object"),
    "models_route": ("the served name and NAME/HEAD for each head", "Models"),
    "health_route": ("the process is alive", "Status"),
    "ready_route": ("the model is warm and the server takes work", "Status"),
    "openapi_route": ("this document", "Object"),
}
_ERRORS = {
    400: "malformed JSON or not a JSON object",
    401: "missing or wrong API key (only when the server has one)",
    413: "a body, a text or a number of texts over a limit (the message names the flag)",
    422: "an unknown field, head, prompt or model, or a value that cannot be honoured",
    429: "overloaded: retry after the Retry-After header",
    500: "a bug, logged with the request id given in the body",
    503: "warming up, draining, or queued past --queue-timeout",
}


def _operation(path: str, method: str, handler: Callable[..., Any], openai: bool, needs_key: bool) -> dict[str, Any]:
    name = getattr(handler, "__name__", "handler")
    error = {"$ref": "#/components/schemas/" + ("OpenAIError" if openai else "Error")}
    slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "root"
    operation: dict[str, Any] = {"operationId": f"{method.lower()}_{slug}", "summary": name.replace("_", " ")}
    if name == "metrics_route":
        ok = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    else:
        description, schema = _ANSWERS.get(name, ("the answer", "Object"))
        ok = {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}
    responses: dict[str, Any] = {"200": ok}
    shape = request_shape(handler)
    codes = [400, 413, 422, 429, 503, 500] if shape is not None else [500]
    if name == "ready_route":
        codes = [503]
    if needs_key:
        codes.insert(0, 401)
    for code in sorted(codes):
        responses[str(code)] = {"description": _ERRORS[code], "content": {"application/json": {"schema": error}}}
    if shape is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{shape.name}"}, "example": _example(shape)}}}
    if needs_key:
        operation["security"] = [{}, {"bearer": []}]  # {}: no key needed when the server runs without one
    operation["responses"] = responses
    return operation


def openapi_document(model: ModelInfo, limits: Limits) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the served model: every route in `app.ROUTES`."""
    from .app import ROUTES  # imported here: app imports this module

    paths: dict[str, dict[str, Any]] = {}
    for path, method, handler, openai, needs_key in ROUTES:
        paths.setdefault(path, {})[method.lower()] = _operation(path, method, handler, openai, needs_key)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobbert-onnx",
            "version": VERSION,
            "description": f"Embeddings of {model.name} (heads: {', '.join(model.heads)}; max_seq_length "
                           f"{model.max_seq_length}) in TEI's and OpenAI's dialects.",
        },
        "paths": paths,
        "components": _components(model, limits),
    }
