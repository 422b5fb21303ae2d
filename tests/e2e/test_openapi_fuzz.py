"""A bounded fuzzer driven by the OpenAPI document, against the running local gateway.

For every operation in `openapi.yaml`, Hypothesis (with hypothesis-jsonschema)
builds requests from the document alone: path and query parameters from
their schemas, bodies from the request body's component schema, sent with a
valid user token and API key. Every answer must be one the document declares
for that operation, its body valid against the declared schema, and never a
5xx. Fixed examples per operation and derandomized: the same requests on every
run, about half a minute in all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft4Validator

from pushflow.validation import openapi
from pushflow_local.runtime import LocalRuntime
from pushflow_local.server import LocalApiServer
from tests.e2e.test_api import (  # noqa: F401 (fixtures)
    Answer,
    Client,
    _object_schemas_work,
    empty_runtime,
)

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 8
METHODS = ("get", "put", "post", "delete")
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def inline(schema: Any, components: Mapping[str, Any]) -> Any:
    """A self-contained JSON Schema: refs replaced, OpenAPI's `nullable` made a type."""
    if isinstance(schema, list):
        return [inline(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return inline(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    result = {
        key: inline(value, components)
        for key, value in schema.items()
        if key not in ("discriminator", "nullable", "format") and not key.startswith("x-")
    }
    if schema.get("nullable") and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
        if "enum" in result:
            result["enum"] = [*result["enum"], None]
    return result


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, item in openapi()["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method in item:
                operation = dict(item[method])
                operation["parameters"] = [*shared, *operation.get("parameters", [])]
                found.append((method.upper(), path, operation))
    return found


def _parameter(parameter: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    schema = inline(parameter.get("schema", {"type": "string"}), _components())
    if schema.get("type") == "string" and "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return from_schema(schema)


def _components() -> dict[str, Any]:
    components: dict[str, Any] = openapi()["components"]["schemas"]
    return components


def request_strategy(path: str, operation: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    path_parameters = {
        p["name"]: _parameter(p) for p in operation["parameters"] if p["in"] == "path"
    }
    query = {p["name"]: _parameter(p) for p in operation["parameters"] if p["in"] == "query"}
    body_schema = (
        operation.get("requestBody", {})
        .get("content", {})
        .get("application/json", {})
        .get("schema")
    )
    body = (
        from_schema(
            {
                "$schema": "http://json-schema.org/draft-04/schema#",
                **inline(body_schema, _components()),
            }
        )
        if body_schema
        else st.none()
    )
    return st.fixed_dictionaries(
        {
            "path": st.fixed_dictionaries(path_parameters),
            "query": st.fixed_dictionaries({}, optional=query),
            "body": body,
        }
    )


def check_conforms(answer: Answer, operation: Mapping[str, Any], case: str) -> None:
    assert answer.status < 500, (case, answer.status, answer.raw[:500])
    declared = operation["responses"]
    assert str(answer.status) in declared, (case, answer.status, answer.raw[:300])
    schema = (
        declared[str(answer.status)].get("content", {}).get("application/json", {}).get("schema")
    )
    if schema is None:
        assert not answer.raw, (case, answer.raw[:300])
        return
    assert answer.headers.get("content-type", "").startswith("application/json"), case
    errors = list(Draft4Validator(inline(schema, _components())).iter_errors(answer.body))
    assert not errors, (case, answer.status, [e.message[:200] for e in errors[:3]])


@pytest.fixture
def fuzz_client(api: LocalApiServer, empty_runtime: LocalRuntime) -> Iterator[Client]:  # noqa: F811
    yield Client(api)


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    operations(),
    ids=[f"{method} {path}" for method, path, _ in operations()],
)
def test_every_answer_is_one_the_document_declares(
    fuzz_client: Client, method: str, path: str, operation: dict[str, Any]
) -> None:
    @FUZZ_SETTINGS
    @given(request=request_strategy(path, operation))
    def check(request: dict[str, Any]) -> None:
        url = path
        for name, value in request["path"].items():
            url = url.replace("{" + name + "}", quote(str(value), safe=""))
        if request["query"]:
            url += "?" + urlencode({k: str(v) for k, v in request["query"].items()})
        answer = fuzz_client.request(method, url, request["body"], user="fuzz-user", backend=True)
        check_conforms(answer, operation, f"{method} {url}")

    check()
