"""Checks on the API's OpenAPI document, as a reviewer of the public API would make them.

The document is imported by API Gateway (routes, authorizers, request
validation, error bodies) and its component schemas validate request bodies
in the Lambda and the local server, so it has to be valid OpenAPI 3.0, keep
to what API Gateway's JSON Schema draft 4 validation understands, and agree
with the template and the code that serve it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfn_tools import load_yaml
from jsonschema import Draft4Validator
from openapi_spec_validator import OpenAPIV30SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENT_PATH = REPO_ROOT / "layers/shared/pushflow/schemas/openapi.yaml"
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
API_APP = REPO_ROOT / "functions/api/app.py"
DOCUMENT_URI = "urn:pushflow:openapi"

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}

ROUTES = {
    ("GET", "/health"): "health",
    ("PUT", "/v1/me/devices"): "registerDevice",
    ("GET", "/v1/me/devices"): "listDevices",
    ("DELETE", "/v1/me/devices/{device_id}"): "deleteDevice",
    ("GET", "/v1/me/preferences"): "getPreferences",
    ("PUT", "/v1/me/preferences"): "replacePreferences",
    ("GET", "/v1/me/topics"): "listTopics",
    ("PUT", "/v1/me/topics/{topic}"): "subscribeTopic",
    ("DELETE", "/v1/me/topics/{topic}"): "unsubscribeTopic",
    ("PUT", "/v1/users/{external_id}"): "upsertUser",
    ("POST", "/v1/notifications"): "sendNotification",
    ("GET", "/v1/notifications/{notification_id}"): "getNotification",
    ("GET", "/v1/notifications/{notification_id}/deliveries"): "listDeliveries",
    ("POST", "/v1/notifications/{notification_id}/cancel"): "cancelNotification",
    ("POST", "/v1/notifications/{notification_id}/redrive"): "redriveNotification",
    ("POST", "/v1/schedules"): "createSchedule",
    ("GET", "/v1/schedules"): "listSchedules",
    ("GET", "/v1/schedules/{schedule_id}"): "getSchedule",
    ("DELETE", "/v1/schedules/{schedule_id}"): "cancelSchedule",
    # What an operator watches (the console reads these, as any backend may).
    ("GET", "/v1/notifications"): "listNotifications",
    ("GET", "/v1/notifications/{notification_id}/execution"): "getNotificationExecution",
    ("GET", "/v1/users/{external_id}"): "getUser",
}

INTEGRATION_URI = {
    "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31"
    "/functions/${ApiFunction.Arn}/invocations"
}

# What API Gateway's request validation (JSON Schema draft 4) understands, and
# what only documents (format, description, ...). No const, if/then, $defs,
# propertyNames, patternProperties (not OpenAPI 3.0), type arrays or nullable.
DRAFT4_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "items",
    "minProperties",
    "maxProperties",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "$ref",
}
DOCUMENTATION_KEYWORDS = {"format", "description", "title", "default", "discriminator"}
SCHEMA_LIST_KEYWORDS = ("oneOf", "anyOf", "allOf")
JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}

GATEWAY_RESPONSES = {
    "BAD_REQUEST_BODY": (400, "invalid_request"),
    "BAD_REQUEST_PARAMETERS": (400, "invalid_request"),
    "UNAUTHORIZED": (401, "unauthorized"),
    # unknown routes (the API uses no IAM auth, the only other cause)
    "MISSING_AUTHENTICATION_TOKEN": (404, "not_found"),
    "INVALID_API_KEY": (401, "unauthorized"),
    "ACCESS_DENIED": (403, "forbidden"),
    "REQUEST_TOO_LARGE": (413, "payload_too_large"),
    "THROTTLED": (429, "throttled"),
    "QUOTA_EXCEEDED": (429, "throttled"),
    "DEFAULT_5XX": (500, "internal"),
}

SAMPLE_SEND = json.loads(
    json.loads((REPO_ROOT / "events/api_send_notification.json").read_text())["body"]
)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT_PATH.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def schemas(document: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"]
    return found


@pytest.fixture(scope="module")
def registry(document: dict[str, Any]) -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(document, default_specification=DRAFT4)
    return Registry().with_resource(DOCUMENT_URI, resource)


def _validator(name: str, registry: Registry[Any]) -> Draft4Validator:
    """Validates against components/schemas/<name>, as the Lambda code does."""
    return Draft4Validator(
        {"$ref": f"{DOCUMENT_URI}#/components/schemas/{name}"}, registry=registry
    )


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def _parameters(
    document: dict[str, Any], path: str, operation: dict[str, Any]
) -> list[dict[str, Any]]:
    return [*document["paths"][path].get("parameters", []), *operation.get("parameters", [])]


def _ref_name(ref: str) -> str:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), f"$ref {ref!r} leaves components/schemas"
    return ref[len(prefix) :]


def _subschemas(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The schemas nested in `schema`, each with where it sits."""
    for name, sub in schema.get("properties", {}).items():
        yield f"properties.{name}", sub
    if isinstance(schema.get("additionalProperties"), dict):
        yield "additionalProperties", schema["additionalProperties"]
    if "items" in schema:
        yield "items", schema["items"]
    if "not" in schema:
        yield "not", schema["not"]
    for keyword in SCHEMA_LIST_KEYWORDS:
        for index, sub in enumerate(schema.get(keyword, [])):
            yield f"{keyword}.{index}", sub


def _request_schemas(
    document: dict[str, Any],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema a request is validated with: bodies and parameters, refs followed."""
    schemas = document["components"]["schemas"]
    pending: list[tuple[str, dict[str, Any]]] = []
    for method, path, operation in _operations(document):
        body = operation.get("requestBody")
        if body:
            pending.append((f"{method} {path} body", body["content"]["application/json"]["schema"]))
        for parameter in _parameters(document, path, operation):
            pending.append((f"{method} {path} {parameter['name']}", parameter["schema"]))
    seen: set[str] = set()
    while pending:
        where, schema = pending.pop()
        yield where, schema
        if "$ref" in schema:
            name = _ref_name(schema["$ref"])
            if name not in seen:
                seen.add(name)
                pending.append((f"#/components/schemas/{name}", schemas[name]))
        for part, sub in _subschemas(schema):
            pending.append((f"{where}.{part}", sub))


def _all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _all_refs(value)


def _intrinsic_names(node: Any) -> Iterator[tuple[str, str]]:
    """(kind, name) of every Ref, Fn::GetAtt, Fn::Sub variable and Fn::If condition."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                yield "ref", value
            elif key == "Fn::GetAtt":
                yield "resource", value[0] if isinstance(value, list) else value.split(".")[0]
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                for variable in re.findall(r"\$\{([^}!][^}]*)\}", text):
                    yield "ref", variable.split(".")[0]
            elif key == "Fn::If":
                yield "condition", value[0]
            yield from _intrinsic_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _intrinsic_names(value)


# -- the document as OpenAPI ------------------------------------------------------------


def test_document_is_valid_openapi_3_0(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.0.")
    errors = [
        str(error).splitlines()[0] for error in OpenAPIV30SpecValidator(document).iter_errors()
    ]
    assert errors == []


def test_document_has_exactly_the_public_routes(document: dict[str, Any]) -> None:
    routes = {(method, path): op.get("operationId") for method, path, op in _operations(document)}
    assert routes == ROUTES


def test_every_route_is_served_by_the_api_function(document: dict[str, Any]) -> None:
    # GIVEN the routes ApiFunction's resolver declares (@app.<method>("/path/<param>"))
    tree = ast.parse(API_APP.read_text(encoding="utf-8"))
    served = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and isinstance(decorator.func.value, ast.Name)
                and decorator.func.value.id == "app"
                and decorator.func.attr in HTTP_METHODS
                and decorator.args
                and isinstance(decorator.args[0], ast.Constant)
            ):
                path = re.sub(r"<(\w+)>", r"{\1}", decorator.args[0].value)
                served.add((decorator.func.attr.upper(), path))

    # THEN the function serves every route of the document, and no other
    documented = {(method, path) for method, path, _ in _operations(document)}
    assert served == documented


def test_every_operation_integrates_with_the_api_function(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        integration = operation.get("x-amazon-apigateway-integration")
        assert integration is not None, f"{method} {path}: no integration"
        assert integration["type"] == "aws_proxy", f"{method} {path}"
        # Lambda is always invoked with POST, whatever the route's method.
        assert integration["httpMethod"] == "POST", f"{method} {path}"
        assert integration["uri"] == INTEGRATION_URI, f"{method} {path}"
        assert operation.get("summary"), f"{method} {path}: no summary"


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(ids) == len(set(ids))


def test_end_user_routes_need_cognito_backend_routes_an_api_key_health_nothing(
    document: dict[str, Any],
) -> None:
    # An operation without `security` would inherit the top level: there must be none.
    assert "security" not in document
    for method, path, operation in _operations(document):
        if path == "/health":
            expected: list[dict[str, list[str]]] = []
        elif path.startswith("/v1/me/"):
            expected = [{"cognito": []}]
        else:
            expected = [{"api_key": []}]
        assert operation.get("security") == expected, f"{method} {path}"


def test_security_schemes_are_a_cognito_authorizer_and_the_api_key_header(
    document: dict[str, Any],
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"cognito", "api_key"}

    cognito = schemes["cognito"]
    assert (cognito["type"], cognito["in"], cognito["name"]) == (
        "apiKey",
        "header",
        "Authorization",
    )
    assert cognito["x-amazon-apigateway-authtype"] == "cognito_user_pools"
    authorizer = cognito["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "cognito_user_pools"
    assert authorizer["providerARNs"] == [
        {
            "Fn::If": [
                "CreateUserPool",
                {"Fn::GetAtt": ["UserPool", "Arn"]},
                {"Ref": "ExistingUserPoolArn"},
            ]
        }
    ]

    # API Gateway requires an API key on operations secured by this exact scheme.
    api_key = schemes["api_key"]
    assert (api_key["type"], api_key["in"], api_key["name"]) == ("apiKey", "header", "x-api-key")
    assert document["x-amazon-apigateway-api-key-source"] == "HEADER"


def test_the_documents_intrinsics_name_what_the_template_defines(
    document: dict[str, Any],
) -> None:
    # cfn-lint cannot see into an AWS::Include: a typo here would only fail the deploy.
    template = load_yaml(TEMPLATE_PATH.read_text(encoding="utf-8"))
    defined = {
        "ref": set(template["Resources"]) | set(template["Parameters"]),
        "resource": set(template["Resources"]),
        "condition": set(template["Conditions"]),
    }
    used = set(_intrinsic_names(document))
    assert used, "the document uses no intrinsic functions: the Include would not wire up"
    for kind, name in used:
        if name.startswith("AWS::"):
            continue
        assert name in defined[kind], f"{kind} {name!r} is not in template.yaml"


def test_api_gateway_checks_parameters_and_leaves_bodies_to_api_function(
    document: dict[str, Any],
) -> None:
    # Bodies are validated where the field at fault can be named (ApiFunction).
    validators = document["x-amazon-apigateway-request-validators"]
    default = document["x-amazon-apigateway-request-validator"]
    assert validators[default] == {"validateRequestBody": False, "validateRequestParameters": True}
    for method, path, operation in _operations(document):
        chosen = operation.get("x-amazon-apigateway-request-validator", default)
        assert validators[chosen]["validateRequestParameters"], f"{method} {path}"
        assert not validators[chosen]["validateRequestBody"], f"{method} {path}"


def test_path_parameters_are_declared_required_and_constrained(
    document: dict[str, Any],
) -> None:
    for method, path, operation in _operations(document):
        declared = {
            p["name"]: p for p in _parameters(document, path, operation) if p["in"] == "path"
        }
        assert set(declared) == set(re.findall(r"\{(\w+)\}", path)), f"{method} {path}"
        for name, parameter in declared.items():
            assert parameter["required"] is True, f"{method} {path} {name}"
            assert parameter["schema"]["pattern"].startswith("^"), f"{method} {path} {name}"
            assert parameter["schema"]["pattern"].endswith("$"), f"{method} {path} {name}"


def test_every_body_is_a_json_component_and_may_be_refused(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        body = operation.get("requestBody")
        if body is None:
            continue
        assert body["required"] is True, f"{method} {path}"
        assert set(body["content"]) == {"application/json"}, f"{method} {path}"
        _ref_name(body["content"]["application/json"]["schema"]["$ref"])
        assert {"400", "413"} <= set(operation["responses"]), f"{method} {path}"


def test_every_error_response_has_the_error_body(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        codes = set(operation["responses"])
        assert any(code.startswith("2") for code in codes), f"{method} {path}: no success"
        if operation["security"]:
            assert {"401", "429"} <= codes, f"{method} {path}"
        for code, response in operation["responses"].items():
            if code.startswith("4"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path} {code}"


def test_body_size_limit_is_published_and_documented(document: dict[str, Any]) -> None:
    assert document["x-pushflow-max-body-bytes"] == 65536
    assert "x-pushflow-max-body-bytes" in document["info"]["description"]


@pytest.mark.parametrize("response_type", sorted(GATEWAY_RESPONSES))
def test_gateway_errors_have_the_error_body(
    document: dict[str, Any], schemas: dict[str, Any], response_type: str
) -> None:
    # GIVEN the response API Gateway gives for this error, with its variables filled in
    status, code = GATEWAY_RESPONSES[response_type]
    response = document["x-amazon-apigateway-gateway-responses"][response_type]
    template = response["responseTemplates"]["application/json"]
    rendered = template.replace(
        "$context.error.validationErrorString", "[object has missing required properties]"
    ).replace("$context.error.messageString", '"Missing Authentication Token"')

    # THEN it is JSON with the API's Error shape and the right status
    body = json.loads(rendered)
    assert response["statusCode"] == status
    assert body["error"] == code
    Draft4Validator(schemas["Error"]).validate(body)
    assert set(body) <= set(schemas["Error"]["properties"])


def test_validation_errors_name_what_failed(document: dict[str, Any]) -> None:
    response = document["x-amazon-apigateway-gateway-responses"]["BAD_REQUEST_BODY"]
    assert (
        "$context.error.validationErrorString" in response["responseTemplates"]["application/json"]
    )


def test_default_4xx_keeps_each_status_with_the_error_body(document: dict[str, Any]) -> None:
    response = document["x-amazon-apigateway-gateway-responses"]["DEFAULT_4XX"]
    # A statusCode here would turn every other 4xx (404, 415, ...) into that one.
    assert "statusCode" not in response
    rendered = response["responseTemplates"]["application/json"].replace(
        "$context.error.messageString", '"Unsupported Media Type"'
    )
    assert set(json.loads(rendered)) == {"error", "message"}


# -- the schemas as JSON Schema draft 4 -------------------------------------------------


def test_request_schemas_use_only_what_api_gateway_validates(document: dict[str, Any]) -> None:
    allowed = DRAFT4_KEYWORDS | DOCUMENTATION_KEYWORDS
    checked = 0
    for where, schema in _request_schemas(document):
        checked += 1
        unknown = {k for k in schema if k not in allowed and not k.startswith("x-")}
        assert unknown == set(), f"{where}: {sorted(unknown)} is not JSON Schema draft 4"
        if "type" in schema:
            assert schema["type"] in JSON_TYPES, f"{where}: type must be one name"
        if "$ref" in schema:
            # Siblings of $ref are ignored by OpenAPI 3.0 and draft 4 alike.
            assert set(schema) == {"$ref"}, f"{where}: keywords beside $ref"
        if "discriminator" in schema:
            mapping = schema["discriminator"]["mapping"]
            branches = [branch["$ref"] for branch in schema["oneOf"]]
            assert sorted(mapping.values()) == sorted(branches), where
        if "enum" in schema:
            assert schema["enum"], f"{where}: empty enum"
    assert checked > 50


def test_every_ref_points_at_a_component_schema(
    document: dict[str, Any], schemas: dict[str, Any]
) -> None:
    refs = set(_all_refs(document))
    assert refs
    for ref in refs:
        assert _ref_name(ref) in schemas, ref


def test_every_component_schema_compiles_as_draft_4(
    schemas: dict[str, Any], registry: Registry[Any]
) -> None:
    for name, schema in schemas.items():
        Draft4Validator.check_schema(schema)
        validator = _validator(name, registry)
        # Validating follows the refs: an unresolvable one raises here.
        for instance in ({}, [], "", 0, None, {"type": "all"}):
            list(validator.iter_errors(instance))


def test_discriminated_branches_each_fix_the_discriminator(schemas: dict[str, Any]) -> None:
    audience = schemas["Audience"]
    name = audience["discriminator"]["propertyName"]
    for value, ref in audience["discriminator"]["mapping"].items():
        branch = schemas[_ref_name(ref)]
        assert name in branch["required"]
        assert branch["properties"][name]["enum"] == [value]
        assert branch["additionalProperties"] is False


# -- the schemas accept and refuse what they should ---------------------------------------


def test_send_request_accepts_the_sample_event_body(registry: Registry[Any]) -> None:
    errors = [
        error.message for error in _validator("SendRequest", registry).iter_errors(SAMPLE_SEND)
    ]
    assert errors == []


def test_send_request_refuses_a_body_without_content(registry: Registry[Any]) -> None:
    body = {key: value for key, value in SAMPLE_SEND.items() if key != "content"}
    errors = list(_validator("SendRequest", registry).iter_errors(body))
    assert [error.message for error in errors] == ["'content' is a required property"]


def _send(**changes: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(SAMPLE_SEND))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = body
        for parent in parents:
            node = node[parent]
        if value is _DROP:
            del node[leaf]
        else:
            node[leaf] = value
    return body


_DROP = object()

# Bodies on both sides of each limit the send request had as a draft 2020-12
# schema (send_request.json, which this document replaces); the draft 4
# translation must keep every one of them. These are the ones it accepts:
SEND_ACCEPTED = {
    "sample",
    "defer",
    "users",
    "topic",
    "filter",
    "filter platform list",
    "priority",
    "image https",
}
SEND_CASES = {
    "sample": _send(),
    "defer": _send(quiet_hours="defer"),
    "bad quiet_hours": _send(quiet_hours="later"),
    "unknown field": _send(priority="high"),
    "category uppercase": _send(category="News"),
    "category too long": _send(category="a" * 33),
    # the category is one of the six: a client from the document cannot send another
    "category unknown": _send(category="a" * 32),
    "audience without type": _send(audience={}),
    "audience unknown type": _send(audience={"type": "everyone"}),
    "all with extra": _send(audience={"type": "all", "topic": "x"}),
    "users": _send(audience={"type": "users", "external_ids": ["u1", "u2"]}),
    "users empty": _send(audience={"type": "users", "external_ids": []}),
    "users repeated": _send(audience={"type": "users", "external_ids": ["u1", "u1"]}),
    "users too many": _send(
        audience={"type": "users", "external_ids": [f"u{i}" for i in range(10001)]}
    ),
    "users id too long": _send(audience={"type": "users", "external_ids": ["u" * 129]}),
    "users missing ids": _send(audience={"type": "users"}),
    "topic": _send(audience={"type": "topic", "topic": "sports.scores"}),
    "topic bad name": _send(audience={"type": "topic", "topic": "sports scores"}),
    "topic with ids": _send(audience={"type": "topic", "topic": "a", "external_ids": ["u"]}),
    "filter": _send(
        audience={
            "type": "filter",
            "where": {
                "locale": {"in": ["de", "fr"]},
                "platform": "ios",
                "attributes": {"plan": "pro", "age": 30, "beta": True},
            },
        }
    ),
    "filter platform list": _send(
        audience={"type": "filter", "where": {"platform": {"in": ["ios", "android"]}}}
    ),
    "filter platform unknown": _send(audience={"type": "filter", "where": {"platform": "web"}}),
    "filter empty where": _send(audience={"type": "filter", "where": {}}),
    "filter unknown condition": _send(audience={"type": "filter", "where": {"country": "de"}}),
    "filter empty in": _send(audience={"type": "filter", "where": {"locale": {"in": []}}}),
    "filter in too long": _send(
        audience={"type": "filter", "where": {"locale": {"in": list(range(101))}}}
    ),
    "filter value too long": _send(
        audience={"type": "filter", "where": {"attributes": {"plan": "p" * 257}}}
    ),
    "filter object value": _send(
        audience={"type": "filter", "where": {"attributes": {"plan": {"eq": 1}}}}
    ),
    "filter too many attributes": _send(
        audience={
            "type": "filter",
            "where": {"attributes": {f"a{i}": i for i in range(21)}},
        }
    ),
    "no title": _send(content__title=_DROP),
    "empty body": _send(content__body=""),
    "title too long": _send(content__title="t" * 2001),
    "empty variant": _send(content__localizations={"de": {}}),
    "variant unknown field": _send(content__localizations={"de": {"subtitle": "x"}}),
    "too many localizations": _send(
        content__localizations={f"de-{i:03d}": {"title": "x"} for i in range(101)}
    ),
    "reserved data key": _send(content__data={"aps": {"alert": "x"}}),
    "reserved data key from": _send(content__data={"from": "x"}),
    "too much data": _send(content__data={f"k{i}": i for i in range(51)}),
    "badge too high": _send(content__badge=100000),
    "badge fraction": _send(content__badge=1.5),
    "sound empty": _send(content__sound=""),
    "ttl too long": _send(content__ttl_seconds=2419201),
    "priority": _send(content__priority="normal"),
    "priority unknown": _send(content__priority="urgent"),
    "mutable content not boolean": _send(content__mutable_content="yes"),
    "image https": _send(content__image_url="https://cdn.example/a.png"),
    "image http": _send(content__image_url="http://cdn.example/a.png"),
    "image too long": _send(content__image_url="https://" + "a" * 1017),
    "content unknown field": _send(content__subtitle="x"),
    "not an object": ["category", "news"],
}


@pytest.mark.parametrize("case", sorted(SEND_CASES))
def test_send_request_keeps_every_limit(registry: Registry[Any], case: str) -> None:
    assert _validator("SendRequest", registry).is_valid(SEND_CASES[case]) == (case in SEND_ACCEPTED)


def test_key_patterns_openapi_cannot_express_are_recorded(schemas: dict[str, Any]) -> None:
    # Key patterns (propertyNames) are neither OpenAPI 3.0 nor draft 4: they stay
    # in the document as x-pushflow-key-pattern, for the code to enforce.
    content = schemas["Content"]["properties"]
    assert content["localizations"]["x-pushflow-key-pattern"] == (
        "^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"
    )
    assert content["data"]["x-pushflow-key-pattern"] == "^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
    where = schemas["AudienceWhere"]["properties"]
    assert where["attributes"]["x-pushflow-key-pattern"] == "^[A-Za-z_][A-Za-z0-9_]{0,63}$"
    # The data keys APNs and FCM reserve are refused by the schema itself.
    reserved = {name for name, rule in content["data"]["properties"].items() if rule == {"not": {}}}
    assert reserved == {"aps", "from", "notification", "message_type"}


@pytest.mark.parametrize(
    ("schema", "body", "valid"),
    [
        ("DeviceRegistration", {"platform": "ios", "token": "a" * 64}, True),
        (
            "DeviceRegistration",
            {
                "platform": "android",
                "token": "fcm:APA91b_token-1-of-a-realistic-length",
                "locale": "pt-BR",
                "time_zone": "America/Sao_Paulo",
            },
            True,
        ),
        ("DeviceRegistration", {"platform": "ios", "token": "a" * 64, "sandbox": True}, True),
        ("DeviceRegistration", {"platform": "web", "token": "a" * 64}, False),
        ("DeviceRegistration", {"platform": "ios"}, False),
        ("DeviceRegistration", {"platform": "ios", "token": "short"}, False),
        ("DeviceRegistration", {"platform": "ios", "token": "a" * 4097}, False),
        ("DeviceRegistration", {"platform": "ios", "token": "has space"}, False),
        ("DeviceRegistration", {"platform": "ios", "token": "a" * 64, "user_id": "u"}, False),
        ("DeviceRegistration", {"platform": "ios", "token": "a" * 64, "locale": "german"}, False),
        ("Preferences", {}, True),
        (
            "Preferences",
            {
                "opted_out_categories": ["marketing"],
                "quiet_hours": {"start": "22:00", "end": "07:30"},
                "caps": {"marketing": 2},
            },
            True,
        ),
        ("Preferences", {"quiet_hours": {"start": "22:00"}}, False),
        ("Preferences", {"quiet_hours": {"start": "24:00", "end": "07:00"}}, False),
        ("Preferences", {"opted_out_categories": ["a", "a"]}, False),
        ("Preferences", {"opted_out_categories": [f"c{i}" for i in range(33)]}, False),
        ("Preferences", {"caps": {"news": 101}}, False),
        ("Preferences", {"caps": {"news": -1}}, False),
        ("Preferences", {"caps": {f"c{i}": 1 for i in range(33)}}, False),
        ("Preferences", {"language": "de"}, False),
        ("UserProfile", {}, True),
        (
            "UserProfile",
            {"locale": "de", "time_zone": "Europe/Berlin", "attributes": {"plan": "pro", "n": 1}},
            True,
        ),
        ("UserProfile", {"attributes": {"tags": ["a"]}}, False),
        ("UserProfile", {"attributes": {f"a{i}": i for i in range(51)}}, False),
        ("UserProfile", {"attributes": {"bio": "b" * 257}}, False),
        ("UserProfile", {"external_id": "u1"}, False),
    ],
)
def test_request_schemas_accept_and_refuse(
    registry: Registry[Any], schema: str, body: Any, valid: bool
) -> None:
    assert _validator(schema, registry).is_valid(body) is valid
