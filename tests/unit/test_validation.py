"""Refused sends name the field a caller has to fix."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from pushflow.domain.errors import InvalidRequest
from pushflow.validation import validate
from tests.conftest import load_event

pytestmark = pytest.mark.unit

VALID: dict[str, Any] = {
    "category": "news",
    "audience": {"type": "all"},
    "content": {"title": "Hi {first_name}", "body": "Your weekly digest is ready"},
}


def refusal(document: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        validate("SendRequest", document)
    return raised.value


def changed(path: str, value: Any) -> dict[str, Any]:
    """VALID with the dotted `path` set to `value` (or removed when value is ...)."""
    document = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = document
    for part in parents:
        target = target.setdefault(part, {})
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return document


def test_the_sample_send_event_is_a_valid_request() -> None:
    body = json.loads(load_event("api_send_notification.json")["body"])

    assert validate("SendRequest", body) == body


@pytest.mark.parametrize(
    "audience",
    [
        {"type": "all"},
        {"type": "users", "external_ids": ["user-1", "user-2"]},
        {"type": "topic", "topic": "sports.football"},
        {"type": "filter", "where": {"locale": {"in": ["de", "de-AT"]}, "platform": "ios"}},
        {"type": "filter", "where": {"attributes": {"plan": "pro", "visits": {"in": [1, 2]}}}},
    ],
)
def test_every_audience_type_is_accepted(audience: dict[str, Any]) -> None:
    validate("SendRequest", {**VALID, "audience": audience})


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (changed("content", ...), "content"),
        (changed("category", ...), "category"),
        (changed("audience", ...), "audience"),
        (changed("content.body", ...), "content.body"),
        (changed("content.title", ...), "content.title"),
        (changed("audience.type", ...), "audience.type"),
        (changed("audience", {"type": "users"}), "audience.external_ids"),
        (changed("audience", {"type": "topic"}), "audience.topic"),
    ],
)
def test_a_missing_field_is_named(document: dict[str, Any], field: str) -> None:
    error = refusal(document)

    assert error.field == field
    assert error.message == f"missing required field {field!r}"
    assert error.to_dict() == {
        "error": "invalid_request",
        "message": error.message,
        "field": field,
    }


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (changed("colour", "red"), "colour"),
        (changed("content.subtitle", "x"), "content.subtitle"),
        (changed("audience", {"type": "all", "topic": "news"}), "audience.topic"),
        (
            changed("audience", {"type": "users", "external_ids": ["a"], "where": {}}),
            "audience.where",
        ),
    ],
)
def test_an_unknown_field_is_named(document: dict[str, Any], field: str) -> None:
    error = refusal(document)

    assert error.field == field
    assert error.message == f"unknown field {field!r}"


def test_an_unknown_field_with_an_apostrophe_in_its_name_is_named() -> None:
    # The field comes from the request; the name must not be cut out of an error message.
    error = refusal(changed("recipient's_name", "Anna"))

    assert error.field == "recipient's_name"


@pytest.mark.parametrize(
    ("document", "field", "says"),
    [
        (changed("content.badge", "3"), "content.badge", "is not of type 'integer'"),
        (changed("content.title", 5), "content.title", "is not of type 'string'"),
        (changed("content", "Hello"), "content", "is not of type 'object'"),
        (changed("audience", "all"), "audience", "is not of type 'object'"),
        (
            changed("audience", {"type": "users", "external_ids": "user-1"}),
            "audience.external_ids",
            "is not of type 'array'",
        ),
        (
            changed("content.localizations", {"de": {"body": 3}}),
            "content.localizations.de.body",
            "is not of type 'string'",
        ),
        (changed("content.title", ""), "content.title", "non-empty"),
        (changed("category", "News!"), "category", "is not one of"),
    ],
)
def test_a_value_of_the_wrong_type_or_shape_is_named(
    document: dict[str, Any], field: str, says: str
) -> None:
    error = refusal(document)

    assert error.field == field
    assert error.message.startswith(f"{field}: ")
    assert says in error.message


@pytest.mark.parametrize("audience_type", ["everyone", "segment", "", 3])
def test_an_unknown_audience_type_is_named_with_the_known_ones(audience_type: Any) -> None:
    error = refusal(changed("audience", {"type": audience_type}))

    assert error.field == "audience.type"
    for known in ("all", "users", "topic", "filter"):
        assert known in error.message


def test_a_body_that_is_not_an_object_is_refused_as_the_request() -> None:
    error = refusal([VALID])

    assert error.field == "request"
    assert "is not of type 'object'" in error.message
    # the message never carries the input back whole
    assert len(error.message) <= 220
