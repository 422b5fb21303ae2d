"""Validation of what comes in, against the JSON Schemas in `schemas/`.

The same schema files validate at the edge (API Gateway's model, the local
server) and in the code, so a request is refused the same way everywhere.
The first error is reported with the field it concerns, as a dotted path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from pushflow.domain.errors import InvalidRequest


@cache
def schema(name: str) -> dict[str, Any]:
    text = resources.files("pushflow.schemas").joinpath(f"{name}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _offending_name(error: ValidationError) -> str | None:
    """The property a `required` or `additionalProperties` error is about, from the data."""
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        return next((name for name in error.validator_value if name not in instance), None)
    if error.validator == "additionalProperties":
        allowed = error.schema.get("properties", {})
        return next((name for name in instance if name not in allowed), None)
    return None


def _field(error: ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    name = _offending_name(error)
    if name is None:
        return path
    return f"{path}.{name}" if path else name


def _message(error: ValidationError) -> str:
    if error.validator == "required":
        return f"missing required field {_field(error)!r}"
    if error.validator == "additionalProperties":
        return f"unknown field {_field(error)!r}"
    return f"{_field(error) or 'request'}: {error.message}"


def validate(name: str, document: Any) -> Mapping[str, Any]:
    """Validate against schema `name`; raise InvalidRequest naming the first bad field."""
    error = best_match(_validator(name).iter_errors(document))
    if error is not None:
        raise InvalidRequest(_message(error), _field(error) or None)
    result: Mapping[str, Any] = document
    return result
