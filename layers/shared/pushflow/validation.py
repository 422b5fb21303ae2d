"""Validation of what comes in, against the API's own OpenAPI document.

`schemas/openapi.yaml` is the one contract: API Gateway validates request
bodies with its component schemas, the local server does the same, and so
does the code here — so a request is refused the same way everywhere. The
schemas keep to JSON Schema draft 4 (what API Gateway understands). The first
error is reported with the field it concerns, as a dotted path; for a `oneOf`
with a discriminator (the audience's `type`), the error of the chosen branch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import extend
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from pushflow.domain.errors import InvalidRequest

_DOCUMENT_URI = "urn:pushflow:openapi"


@cache
def openapi() -> dict[str, Any]:
    text = resources.files("pushflow.schemas").joinpath("openapi.yaml").read_text()
    document: dict[str, Any] = yaml.safe_load(text)
    return document


# The default when the document does not say (x-pushflow-max-body-bytes).
MAX_BODY_BYTES = 65536


def max_body_bytes() -> int:
    return int(openapi().get("x-pushflow-max-body-bytes", MAX_BODY_BYTES))


@cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(openapi(), default_specification=DRAFT4)
    registry: Registry[Any] = Registry().with_resource(_DOCUMENT_URI, resource)
    return registry


def _key_pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """`x-pushflow-key-pattern`: what draft 4 cannot say (propertyNames), the keys' form."""
    if not isinstance(instance, dict):
        return
    for key in instance:
        if not re.search(pattern, key):
            yield ValidationError(
                f"{key!r} is not an allowed name (must match {pattern})", path=[key]
            )


# Draft 4 (what API Gateway validates with) plus the key patterns the document
# records for the code to enforce.
_Validator = extend(Draft4Validator, {"x-pushflow-key-pattern": _key_pattern})


@cache
def validator(name: str) -> Any:
    """A validator for the component schema `name` (refs resolve within the document)."""
    if name not in openapi()["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in openapi.yaml")
    schema = {"$ref": f"{_DOCUMENT_URI}#/components/schemas/{name}"}
    return _Validator(schema, registry=_registry())


@cache
def _parameter_patterns() -> dict[str, str]:
    """Path and query parameter patterns by name (the document keeps them consistent)."""
    patterns: dict[str, str] = {}
    for operations in openapi()["paths"].values():
        for operation in [operations, *operations.values()]:
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                pattern = parameter.get("schema", {}).get("pattern")
                if pattern and parameter.get("in") in ("path", "query"):
                    patterns.setdefault(parameter["name"], pattern)
    return patterns


def check_parameter(name: str, value: str) -> str:
    """A path/query parameter against its pattern (API Gateway does not check patterns)."""
    pattern = _parameter_patterns().get(name)
    if pattern is not None and not re.search(pattern, value):
        raise InvalidRequest(f"{name} {_bounded(repr(value))} does not match {pattern}", name)
    return value


def _join(path: Sequence[Any], name: str | None = None) -> str:
    parts = [str(part) for part in path]
    if name is not None:
        parts.append(name)
    return ".".join(parts)


def _explain(error: ValidationError, prefix: Sequence[Any] = ()) -> InvalidRequest:
    path = [*prefix, *error.absolute_path]
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        name = next((n for n in error.validator_value if n not in instance), None)
        return InvalidRequest(f"missing required field {_join(path, name)!r}", _join(path, name))
    if error.validator == "additionalProperties" and error.validator_value is False:
        allowed = error.schema.get("properties", {})
        name = next((n for n in instance if n not in allowed), None)
        return InvalidRequest(f"unknown field {_join(path, name)!r}", _join(path, name))
    if error.validator == "oneOf" and _exactly_one_of(error.validator_value):
        # `oneOf: [{required: [a]}, {required: [b]}]`: exactly one of the fields a, b.
        names = [branch["required"][0] for branch in error.validator_value]
        given = [name for name in names if name in instance]
        field = _join(path, (given or names)[0])
        return InvalidRequest(f"give exactly one of {' and '.join(names)}", field)
    field = _join(path) or "request"
    if error.validator == "enum" and len(error.validator_value) > _LISTED_VALUES:
        # A long list (the time zones) is named, not repeated in the answer.
        noun = error.schema.get("title", "value")
        allowed = f"not one of the {len(error.validator_value)} the API document lists"
        message = f"{field}: unknown {noun} {_bounded(repr(error.instance))} ({allowed})"
        return InvalidRequest(message, field)
    return InvalidRequest(f"{field}: {_bounded(error.message)}", field)


# Enums longer than this are not spelt out in an error message.
_LISTED_VALUES = 20


def _exactly_one_of(branches: Any) -> bool:
    return isinstance(branches, list) and all(
        isinstance(branch, Mapping) and set(branch) == {"required"} and len(branch["required"]) == 1
        for branch in branches
    )


# jsonschema's messages quote the offending value: a 60 KiB string would come back
# whole in the answer. Enough of it to recognise, never the input itself.
MAX_MESSAGE_CHARS = 200


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"


def _discriminated(error: ValidationError) -> ValidationError | None:
    """The outermost `oneOf` with a discriminator this error sits in, if any."""
    found = None
    node: ValidationError | None = error
    while node is not None:
        if (
            node.validator == "oneOf"
            and isinstance(node.schema, Mapping)
            and "discriminator" in node.schema
        ):
            found = node
        node = node.parent
    return found


def _explain_branch(error: ValidationError) -> InvalidRequest:
    discriminator = error.schema["discriminator"]
    name = discriminator["propertyName"]
    mapping: Mapping[str, str] = discriminator.get("mapping", {})
    path = list(error.absolute_path)
    if isinstance(error.instance, dict) and name not in error.instance:
        return InvalidRequest(f"missing required field {_join(path, name)!r}", _join(path, name))
    chosen = error.instance.get(name) if isinstance(error.instance, dict) else None
    # Any JSON value may stand there: only a string can name a branch (and be hashed).
    if not isinstance(chosen, str) or chosen not in mapping:
        field = _join(path, name)
        return InvalidRequest(f"{field} must be one of {', '.join(sorted(mapping))}", field)
    branch = mapping[chosen].rsplit("/", 1)[-1]
    inner = best_match(validator(branch).iter_errors(error.instance))
    if inner is None:  # valid for its branch yet not oneOf: matches two branches
        return InvalidRequest(f"{_join(path) or 'request'} is ambiguous", _join(path) or "request")
    return _explain(inner, path)


def _nul_field(document: Any, path: tuple[Any, ...] = ()) -> str | None:
    """Where a NUL character hides in the document (PostgreSQL text cannot hold one)."""
    if isinstance(document, str):
        return _join(path) or "request" if "\x00" in document else None
    if isinstance(document, dict):
        for key, value in document.items():
            if "\x00" in key:
                return _join(path, key.replace("\x00", "\\0"))
            found = _nul_field(value, (*path, key))
            if found:
                return found
    if isinstance(document, list):
        for index, item in enumerate(document):
            found = _nul_field(item, (*path, index))
            if found:
                return found
    return None


def validate(name: str, document: Any) -> Mapping[str, Any]:
    """Validate against component schema `name`; raise InvalidRequest naming the field."""
    error = best_match(validator(name).iter_errors(document))
    if error is not None:
        branch = _discriminated(error)
        raise _explain_branch(branch) if branch is not None else _explain(error)
    field = _nul_field(document)
    if field is not None:
        raise InvalidRequest(f"{field} contains a NUL character", field)
    result: Mapping[str, Any] = document
    return result
