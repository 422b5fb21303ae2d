"""The API document lists exactly the time zones the functions accept.

A client generated from the document sends only zones the API takes: the
document's TimeZone enum is the zone list of the `tzdata` release the
functions ship, and every request field that is a zone refers to it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest

from pushflow.domain.errors import InvalidRequest
from pushflow.domain.registration import check_time_zone
from pushflow.validation import openapi, validate

pytestmark = pytest.mark.unit


def _shipped_zones() -> list[str]:
    return sorted(resources.files("tzdata").joinpath("zones").read_text().split())


def _zone_fields(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every `time_zone` property under the document's components, with its schema."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "time_zone":
                found.append((path, value))
            found += _zone_fields(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            found += _zone_fields(item, path)
    return found


def test_the_document_lists_exactly_the_zones_of_the_shipped_tz_database() -> None:
    listed = openapi()["components"]["schemas"]["TimeZone"]["enum"]

    assert listed == _shipped_zones()


def test_every_listed_zone_is_one_the_functions_accept() -> None:
    for zone in openapi()["components"]["schemas"]["TimeZone"]["enum"]:
        assert check_time_zone(zone, "time_zone") == zone


def test_every_zone_field_a_client_sends_refers_to_the_list() -> None:
    fields = _zone_fields(openapi()["components"]["schemas"])
    # The User answer's time_zone is what was stored; the others are requests.
    requests = [(path, schema) for path, schema in fields if not path.startswith(".User.")]

    assert len(requests) >= 3
    for path, schema in requests:
        assert schema == {"$ref": "#/components/schemas/TimeZone"}, path


def test_a_zone_the_database_does_not_know_is_refused_naming_the_field_briefly() -> None:
    body = {"locale": "de-AT", "time_zone": "Europe/Atlantis"}

    with pytest.raises(InvalidRequest) as refused:
        validate("UserProfile", body)

    assert refused.value.field == "time_zone"
    assert "unknown time zone 'Europe/Atlantis'" in str(refused.value)
    # The 598 names are not repeated in the answer.
    assert len(str(refused.value)) < 200
