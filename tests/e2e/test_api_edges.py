"""The API at its edges, through the real local gateway: no 5xx, every 400 names its field.

Each case was found by an outside client (issue 17): a request the API refused
with a 500, or with a 400 that did not say which field, or with an answer as
large as the request. Every request goes over a socket to `LocalApiServer`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pushflow_local.runtime import LocalRuntime
from pushflow_local.server import LocalApiServer
from tests.e2e.test_api import Client, assert_error

pytestmark = pytest.mark.e2e

NOTIFICATIONS = "/v1/notifications"


@pytest.fixture
def client(api: LocalApiServer) -> Iterator[Client]:
    yield Client(api)


def valid_send(**overrides: Any) -> dict[str, Any]:
    send: dict[str, Any] = {
        "category": "news",
        "audience": {"type": "users", "external_ids": [f"edge-{uuid.uuid4().hex[:8]}"]},
        "content": {"title": "Hello", "body": "World"},
    }
    send.update(overrides)
    return send


def field_error(client: Client, path: str, body: Any, method: str = "POST") -> dict[str, Any]:
    answer = client.request(method, path, body, backend=True)
    return assert_error(answer, 400, "invalid_request")


@pytest.mark.parametrize("audience_type", [{"a": 1}, ["users"], 3, None])
def test_an_audience_type_of_the_wrong_type_is_a_field_error(
    client: Client, audience_type: Any
) -> None:
    # GIVEN an audience whose type is no string (the validator once hashed it: a 500)
    send = valid_send(audience={"type": audience_type, "external_ids": ["a"]})
    # THEN a send and a schedule's send are refused naming the field
    assert field_error(client, NOTIFICATIONS, send)["field"] == "audience.type"
    schedule = {"send": send, "local_time": {"at": "09:00"}}
    assert field_error(client, "/v1/schedules", schedule)["field"] == "send.audience.type"


@pytest.mark.parametrize("day", ["2026-02-30", "2026-13-01", "2026-00-10"])
def test_a_local_date_that_is_no_date_is_a_field_error(client: Client, day: str) -> None:
    schedule = {"send": valid_send(), "local_time": {"at": "09:00", "date": day}}
    assert field_error(client, "/v1/schedules", schedule)["field"] == "local_time.date"


@pytest.mark.parametrize(
    ("case", "path", "body", "field"),
    [
        ("no quiet_hours.end", "/v1/me/preferences", {"quiet_hours": {"start": "22:00"}}, None),
        (
            "empty external_ids",
            NOTIFICATIONS,
            valid_send(audience={"type": "users", "external_ids": []}),
            "audience.external_ids",
        ),
        ("unknown audience", NOTIFICATIONS, valid_send(audience={"type": "x"}), "audience.type"),
        (
            "empty where",
            NOTIFICATIONS,
            valid_send(audience={"type": "filter", "where": {}}),
            "audience.where",
        ),
        ("quiet_hours later", NOTIFICATIONS, valid_send(quiet_hours="later"), "quiet_hours"),
        (
            "data.aps",
            NOTIFICATIONS,
            valid_send(content={"title": "t", "body": "b", "data": {"aps": {"alert": "x"}}}),
            "content.data.aps",
        ),
        ("no offset", NOTIFICATIONS, valid_send(send_at="2030-01-01T10:00:00"), "send_at"),
        (
            "short cron",
            "/v1/schedules",
            {"send": valid_send(), "recurrence": {"cron": "* * *", "time_zone": "UTC"}},
            "recurrence.cron",
        ),
    ],
)
def test_every_400_names_its_field(
    client: Client, case: str, path: str, body: Any, field: str | None
) -> None:
    if path.startswith("/v1/me/"):
        answer = client.request("PUT", path, body, user=f"edge-{uuid.uuid4().hex[:8]}")
        error = assert_error(answer, 400, "invalid_request")
        assert error.get("field") == "quiet_hours.end", (case, error)
        return
    assert field_error(client, path, body).get("field") == field, case


@pytest.mark.parametrize("size", [70 * 1024, 1_300_000])
def test_a_body_over_64_kib_is_413_whatever_it_holds_and_is_not_echoed(
    client: Client, size: int
) -> None:
    # GIVEN a body over the document's 64 KiB that is also invalid
    body = valid_send(category="x" * size)
    answer = client.request("POST", NOTIFICATIONS, body, backend=True)
    # THEN 413, and the answer does not carry the input back
    assert_error(answer, 413, "payload_too_large")
    assert len(answer.raw) < 1024, len(answer.raw)


def test_no_error_message_echoes_a_large_input(client: Client) -> None:
    # A 60 KiB invalid value, under the size limit: refused, the answer stays small.
    answer = client.request("POST", NOTIFICATIONS, valid_send(category="y" * 60_000), backend=True)
    error = assert_error(answer, 400, "invalid_request")
    assert error["field"] == "category"
    assert len(answer.raw) < 1024, len(answer.raw)


@pytest.mark.parametrize("suffix", ["", "/deliveries", "/cancel"])
def test_a_malformed_notification_id_is_400_naming_it(client: Client, suffix: str) -> None:
    method = "POST" if suffix == "/cancel" else "GET"
    answer = client.request(method, f"{NOTIFICATIONS}/not-an-id{suffix}", backend=True)
    assert assert_error(answer, 400, "invalid_request")["field"] == "notification_id"


def test_an_unknown_route_with_valid_credentials_is_404(client: Client) -> None:
    answer = client.request("GET", "/v1/no-such-route", backend=True)
    assert_error(answer, 404, "not_found")
    # and without credentials too: the route does not exist whoever asks
    assert_error(client.request("GET", "/v1/no-such-route"), 404, "not_found")


def test_a_known_route_without_credentials_is_still_401(client: Client) -> None:
    answer = client.request("GET", f"{NOTIFICATIONS}/{uuid.uuid4()}")
    assert_error(answer, 401, "unauthorized")


def test_json_body_errors_are_json(client: Client) -> None:
    answer = client.request("POST", NOTIFICATIONS, raw=b"{not json", backend=True)
    error = assert_error(answer, 400, "invalid_request")
    assert error.get("field") == "request"
    assert json.loads(answer.raw)


# -- ApiFunction's own edge: the event ---------------------------------------------------


def _rest_event(body: str, *, base64_encoded: bool) -> dict[str, Any]:
    from tests.conftest import load_event

    event: dict[str, Any] = load_event("api_send_notification.json")
    event["body"] = body
    event["isBase64Encoded"] = base64_encoded
    event["headers"] = {**event["headers"], "Idempotency-Key": f"b64-{uuid.uuid4().hex}"}
    event["multiValueHeaders"] = None
    return event


def test_a_base64_encoded_json_body_is_decoded(runtime: LocalRuntime) -> None:
    import base64

    send = valid_send(quiet_hours="defer")
    encoded = base64.b64encode(json.dumps(send).encode()).decode()
    answer = runtime.invoke("ApiFunction", _rest_event(encoded, base64_encoded=True))
    assert answer["statusCode"] == 202, answer["body"]
    notification_id = json.loads(answer["body"])["notification_id"]
    stored = runtime.services.repository.get_notification(notification_id)
    assert stored.category == "news"
    runtime.wait(stored.execution_arn or "", timeout=30)


def test_a_body_flagged_base64_that_is_not_is_a_field_error(runtime: LocalRuntime) -> None:
    answer = runtime.invoke("ApiFunction", _rest_event("{not base64}", base64_encoded=True))
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["field"] == "request"


HTTP_API_V2_EVENT = {
    "version": "2.0",
    "routeKey": "GET /health",
    "rawPath": "/health",
    "headers": {},
    "requestContext": {"http": {"method": "GET", "path": "/health"}},
}
AUTHORIZER_EVENT = {
    "type": "TOKEN",
    "authorizationToken": "allow",
    "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc/api/GET/health",
}


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (HTTP_API_V2_EVENT, "payload format 2.0"),
        (AUTHORIZER_EVENT, "authorizer"),
        ({"notification_id": "x"}, "no 'httpMethod'"),
        ([1, 2], "not an array"),
    ],
)
def test_an_event_of_another_shape_is_a_named_error(
    runtime: LocalRuntime, event: Any, says: str
) -> None:
    from pushflow.domain.errors import UnsupportedEvent

    with pytest.raises(UnsupportedEvent) as raised:
        runtime.invoke("ApiFunction", event)
    assert says in str(raised.value)


@pytest.mark.parametrize("category", ["transactional", "security"])
def test_a_cap_for_an_uncapped_category_is_a_field_error(client: Client, category: str) -> None:
    # Accepting it would be a promise never kept: these pushes are never capped.
    user = f"edge-{uuid.uuid4().hex[:8]}"
    answer = client.request("PUT", "/v1/me/preferences", {"caps": {category: 1}}, user=user)
    assert assert_error(answer, 400, "invalid_request")["field"] == f"caps.{category}"
    stored = client.request("GET", "/v1/me/preferences", user=user)
    assert category not in stored.body.get("caps", {})


def test_the_answer_to_a_send_says_how_many_users_are_unknown(client: Client) -> None:
    known = f"edge-{uuid.uuid4().hex[:8]}"
    assert client.request("PUT", f"/v1/users/{known}", {}, backend=True).status == 201
    send = valid_send(
        audience={"type": "users", "external_ids": [known, "edge-nobody-1", "edge-nobody-2"]}
    )
    answer = client.request("POST", NOTIFICATIONS, send, backend=True)
    assert answer.status == 202, answer.raw
    assert answer.body["unknown_external_ids"] == 2
    # An audience that is not a list of users has nothing to count.
    everyone = client.request(
        "POST",
        NOTIFICATIONS,
        valid_send(audience={"type": "topic", "topic": "nobody-follows"}),
        backend=True,
    )
    assert everyone.status == 202 and "unknown_external_ids" not in everyone.body


def test_deliveries_say_which_locale_variant_and_title_each_device_got(
    client: Client, runtime: LocalRuntime
) -> None:
    from tests.e2e.test_api import new_token

    # GIVEN three users: Austrian German, English, and French (no French variant)
    prefix = f"edge-{uuid.uuid4().hex[:8]}"
    people = {"at": ("de-AT", "Anna"), "en": ("en", "Ben"), "fr": ("fr", "Chloé")}
    devices = {}
    for key, (locale, first_name) in people.items():
        user = f"{prefix}-{key}"
        profile = {"locale": locale, "attributes": {"first_name": first_name}}
        assert client.request("PUT", f"/v1/users/{user}", profile, backend=True).status == 201
        answer = client.register(user, new_token(), locale=locale)
        devices[answer.body["device_id"]] = key
    content = {
        "title": "Hi {first_name}",
        "body": "Your digest",
        "localizations": {"de": {"title": "Hallo {first_name}", "body": "Deine Übersicht"}},
    }
    send = valid_send(
        audience={"type": "users", "external_ids": [f"{prefix}-{k}" for k in people]},
        content=content,
    )
    # WHEN the send has run
    accepted = client.send(send)
    assert accepted.status == 202, accepted.raw
    client.wait_until_done(accepted.body["notification_id"])
    # THEN each delivery row says which variant it got and the title it showed
    shown = {
        devices[row["device_id"]]: (row["outcome"], row["content_locale"], row["title"])
        for row in client.deliveries(accepted.body["notification_id"])
    }
    assert shown == {
        "at": ("sent", "de", "Hallo Anna"),
        "en": ("sent", "default", "Hi Ben"),
        "fr": ("sent", "default", "Hi Chloé"),
    }
