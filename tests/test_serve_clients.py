"""Real clients against the server: its OpenAPI document, and huggingface_hub's `InferenceClient`.

The document must list every route in `app.ROUTES`, with each request body's fields being the ones
its parser accepts (the same sets, not a copy), and be a valid OpenAPI 3.1 document whose schemas
are valid JSON Schema 2020-12 and agree with what the server accepts and refuses.
"""

from __future__ import annotations

import asyncio
import signal

import jsonschema
import numpy as np
import pytest

from jobbert_onnx.runtime import Embedder
from jobbert_onnx.serve import app as app_module
from jobbert_onnx.serve import schemas
from jobbert_onnx.serve.config import Limits
from jobbert_onnx.serve.openapi import openapi_document, request_shape

from . import toy_artifact
from .serve_fakes import FakeEmbedder, serving, server_process

HTTP_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


def document_for(embedder) -> tuple[dict, schemas.ModelInfo, Limits]:
    app = app_module.create_app(embedder)
    state = app.state.server
    return openapi_document(state.model, state.limits), state.model, state.limits


def resolve(document: dict, ref: str) -> dict:
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def refs(node) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def body_schema(document: dict, path: str) -> dict:
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return resolve(document, schema["$ref"]) if "$ref" in schema else schema


def test_the_document_is_openapi_3_1_and_lists_every_route(embedder):
    document, model, limits = document_for(embedder)
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] and document["info"]["version"]
    listed = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    assert listed == {(path, method) for path, method, *_ in app_module.ROUTES}
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            assert method in HTTP_METHODS
            assert operation["responses"] and all(str(code).isdigit() for code in operation["responses"])
            assert all("description" in response for response in operation["responses"].values())
            operation_ids.append(operation["operationId"])
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    for ref in refs(document):
        resolve(document, ref)  # every $ref points somewhere
    for name, schema in document["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    # the routes that need the key say so; the open ones do not
    for path, method, _, _, needs_key in app_module.ROUTES:
        operation = document["paths"][path][method.lower()]
        assert ({"bearer": []} in operation.get("security", [])) == needs_key, (path, method)


def test_request_bodies_are_the_parsers_field_sets(embedder):
    document, _, _ = document_for(embedder)
    posts = [(path, handler) for path, method, handler, *_ in app_module.ROUTES if method == "POST"]
    assert posts
    for path, handler in posts:
        shape = request_shape(handler)
        assert shape is not None, f"POST {path}: no request shape for {handler.__name__}"
        schema = body_schema(document, path)
        assert set(schema["properties"]) == set(shape.fields), path
        assert set(schema["required"]) == set(shape.required) and schema["additionalProperties"] is False
    assert request_shape(app_module.embed_tei).fields is schemas._EMBED_FIELDS  # the same set, not a copy
    assert request_shape(app_module.embed_openai).fields is schemas._OPENAI_FIELDS


def test_the_schemas_agree_with_what_the_server_accepts_and_refuses(embedder):
    """Each POST route's example is valid for its schema and answered 200; each value the schema
    refuses (an unknown field, a head the model lacks, too many texts) is refused by the server too."""
    document, model, limits = document_for(embedder)
    posts = sorted({path for path, method, *_ in app_module.ROUTES if method == "POST"})
    cases = []
    for path in posts:
        schema = {**body_schema(document, path), "components": document["components"]}
        example = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
        jsonschema.validate(example, schema, cls=jsonschema.Draft202012Validator)
        bad = [{**example, "no_such_field": 1}]
        text_field = next(f for f in ("inputs", "input", "source") if f in example)
        bad.append({**example, text_field: ["x"] * (limits.max_inputs + 1)})
        head_field = next((f for f in ("head", "source_head") if f in schema["properties"]), None)
        if head_field:
            bad.append({**example, head_field: "no-such-head"})
        for body in bad:
            assert not jsonschema.Draft202012Validator(schema).is_valid(body), (path, body)
        cases.append((path, example, bad))

    async def scenario():
        async with serving(FakeEmbedder(embedder)) as (client, _):
            served = (await client.get("/api-doc/openapi.json")).json()
            answers = []
            for path, example, bad in cases:
                good = await client.post(path, json=example)
                refused = [(await client.post(path, json=body)).status_code for body in bad]
                answers.append((path, good.status_code, refused))
            return served, answers

    served, answers = asyncio.run(scenario())
    assert served == document
    for path, good, refused in answers:
        assert good == 200, path
        assert all(400 <= status < 500 for status in refused), (path, refused)


def test_the_document_names_the_models_heads_and_limits(embedder):
    document, model, limits = document_for(embedder)
    embed = body_schema(document, "/embed")
    heads = embed["properties"]["head"]
    assert set(model.heads) <= set(heads["enum"])
    texts = resolve(document, embed["properties"]["inputs"]["$ref"])
    assert limits.max_inputs in [branch.get("maxItems") for branch in texts["oneOf"]]


# -- huggingface_hub's InferenceClient --------------------------------------------------------------
def test_huggingface_hub_feature_extraction_gets_the_runtimes_vectors(artifact, monkeypatch):
    """`InferenceClient(model=URL).feature_extraction` posts TEI's fields to the server's root."""
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError

    # conftest keeps the hub offline; with model=URL the client talks only to our loopback server
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    embedder = Embedder(artifact)
    texts = ["Senior Software Developer", "nurse", "data engineer python"]
    dimension = toy_artifact.HEAD_DIMS[embedder.default_head]
    with server_process(["-m", "jobbert_onnx.serve", str(artifact)], env={"JOBBERT_ONNX_API_KEY": "s3cret"}) as (process, url):
        client = InferenceClient(model=url, token="s3cret")
        default = client.feature_extraction(texts[0])
        normalized = client.feature_extraction(texts, normalize=True)
        raw = client.feature_extraction(texts, normalize=False, truncate=True, truncation_direction="right")
        sized = client.feature_extraction(texts[1], dimensions=dimension, normalize=False)
        with pytest.raises(HfHubHTTPError) as wrong_key:
            InferenceClient(model=url, token="wrong").feature_extraction("nurse")
        with pytest.raises(HfHubHTTPError) as left:
            client.feature_extraction("nurse", truncation_direction="left")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0

    assert default.dtype == np.float32 and default.shape == (1, dimension)
    np.testing.assert_allclose(default, embedder.encode(texts[:1], normalize=True), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(normalized, embedder.encode(texts, normalize=True), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(raw, embedder.encode(texts), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sized, embedder.encode(texts[1:2]), rtol=1e-6, atol=1e-7)
    assert wrong_key.value.response.status_code == 401
    assert left.value.response.status_code == 422


def test_huggingface_hub_encoding_format_float(embedder):
    """What `InferenceClient.feature_extraction(text, encoding_format="float")` posts to `POST /`."""
    body = {"inputs": "nurse", "encoding_format": "float"}

    async def scenario():
        async with serving(FakeEmbedder(embedder)) as (client, _):
            return await client.post("/", json=body)

    response = asyncio.run(scenario())
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json(), embedder.encode(["nurse"], normalize=True), rtol=1e-6, atol=1e-7)

