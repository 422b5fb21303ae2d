"""Security through the real local HTTP server: users are isolated, backend routes need the
backend's key, and no secret or device token ever reaches a log.

End users act only as the `sub` of their token; nothing in a body, a query or a
path lets them name another user. Backend routes (the document's `api_key`
routes) refuse end-user tokens at the gateway, and ApiFunction refuses them
again on its own, so a misconfigured stage would not open them either.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from pushflow.adapters.postgres import ConnectionParams
from pushflow.adapters.recipient_filter import preferences_key
from pushflow.validation import openapi
from pushflow_local.auth import CLIENT_ID, ISSUER, LocalCredentials
from pushflow_local.runtime import LocalRuntime
from pushflow_local.server import LocalApiServer
from reliability.faults import (
    PostgresConnectionDropped,
    RedisUnavailable,
    SnsBursts,
    Trigger,
    all_active,
)
from tests.conftest import load_event
from tests.e2e.test_api import Client, assert_error, new_token, new_user, outcomes
from tests.e2e.test_hostile_input import fingerprint, function_log

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(api: LocalApiServer, clean_runtime: LocalRuntime) -> Client:
    return Client(api)


def ios_token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def device_ids(client: Client, user: str) -> list[str]:
    return [device["device_id"] for device in client.devices(user)]


# -- one user, another user's things ---------------------------------------------------------


def test_a_user_can_never_read_or_change_another_users_devices(client: Client) -> None:
    runtime = client.server.runtime
    anna, ben = new_user(), new_user()
    annas = [
        client.register(anna).body["device_id"],
        client.register(anna, ios_token(), platform="ios").body["device_id"],
    ]
    bens = client.register(ben).body["device_id"]

    # Ben sees only his own device, whatever he adds to the request.
    assert device_ids(client, ben) == [bens]
    for query in (f"?user={anna}", f"?sub={anna}", f"?external_id={anna}"):
        answer = client.request("GET", f"/v1/me/devices{query}", user=ben)
        assert [d["device_id"] for d in answer.body["devices"]] == [bens]

    # He can neither delete Anna's devices nor register one in her name.
    before = fingerprint(runtime)
    for device_id in annas:
        assert_error(client.request("DELETE", f"/v1/me/devices/{device_id}", user=ben), 403)
    for field in ("user", "user_id", "external_id", "sub"):
        body = {"platform": "android", "token": new_token(), field: anna}
        assert_error(client.request("PUT", "/v1/me/devices", body, user=ben), 400)
    assert fingerprint(runtime) == before
    assert sorted(device_ids(client, anna)) == sorted(annas)


def test_a_user_can_never_read_or_change_another_users_preferences(
    client: Client, runtime: LocalRuntime
) -> None:
    anna, ben = new_user(), new_user()
    annas = {
        "opted_out_categories": ["marketing"],
        "quiet_hours": {"start": "22:00", "end": "07:00"},
    }
    assert client.request("PUT", "/v1/me/preferences", annas, user=anna).status == 200
    (anna_id,) = runtime.services.repository.run(
        "SELECT id FROM users WHERE external_id = :e", e=anna
    )[0]
    cached = runtime.services.store.client.get(preferences_key(anna_id))

    # Ben reads his own (the defaults) and writes only his own.
    assert client.request("GET", "/v1/me/preferences", user=ben).body == {
        "opted_out_categories": [],
        "caps": {},
    }
    assert (
        client.request(
            "PUT", "/v1/me/preferences", {"opted_out_categories": ["news"]}, user=ben
        ).status
        == 200
    )
    for field in ("user", "user_id", "external_id"):
        assert_error(client.request("PUT", "/v1/me/preferences", {field: anna}, user=ben), 400)
    assert client.request("GET", f"/v1/me/preferences?user={anna}", user=ben).body == {
        "opted_out_categories": ["news"],
        "caps": {},
    }

    # Anna's are as she left them, in PostgreSQL and in the cache the send path reads.
    shown = client.request("GET", "/v1/me/preferences", user=anna).body
    assert shown == {**annas, "caps": {}}
    assert runtime.services.store.client.get(preferences_key(anna_id)) == cached


def test_a_user_can_never_read_or_change_another_users_topics(client: Client) -> None:
    anna, ben = new_user(), new_user()
    assert client.request("PUT", "/v1/me/topics/sports", user=anna).status == 204

    assert client.request("GET", "/v1/me/topics", user=ben).body == {"topics": []}
    assert client.request("DELETE", "/v1/me/topics/sports", user=ben).status == 204
    assert client.request("GET", "/v1/me/topics", user=anna).body == {"topics": ["sports"]}


def test_a_user_can_never_read_or_cancel_notifications(client: Client) -> None:
    # Notifications are the backend's: an end user has no route to anyone's, not even
    # to one sent to them.
    runtime = client.server.runtime
    anna = new_user()
    client.register(anna)
    sent = client.send(
        {
            "category": "news",
            "audience": {"type": "users", "external_ids": [anna]},
            "content": {"title": "Hi", "body": "x"},
            "send_at": (runtime.clock.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    ).body
    notification_id = sent["notification_id"]
    before = fingerprint(runtime)
    for method, path in (
        ("GET", f"/v1/notifications/{notification_id}"),
        ("GET", f"/v1/notifications/{notification_id}/deliveries"),
        ("POST", f"/v1/notifications/{notification_id}/cancel"),
    ):
        assert_error(client.request(method, path, user=anna), 401, "unauthorized")
    assert fingerprint(runtime) == before
    assert client.notification(notification_id)["status"] == "scheduled"
    cancelled = client.request("POST", f"/v1/notifications/{notification_id}/cancel", backend=True)
    assert cancelled.status == 202
    scheduler = runtime.client("scheduler")
    for group in runtime.schedule_groups:
        for schedule in scheduler.list_schedules(GroupName=group).get("Schedules", []):
            scheduler.delete_schedule(GroupName=group, Name=schedule["Name"])


# -- backend routes ----------------------------------------------------------------------------


def backend_operations() -> list[tuple[str, str]]:
    """Every operation the document guards with the backend's API key."""
    found = []
    for path, item in openapi()["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and {"api_key": []} in operation.get("security", []):
                found.append((method.upper(), path))
    return found


def test_the_document_guards_every_non_me_route_with_the_api_key() -> None:
    operations = backend_operations()
    # 10, and the three an operator's console reads (sends list, execution, a user).
    assert len(operations) == 13
    assert all(not path.startswith("/v1/me") for _, path in operations)


@pytest.mark.parametrize("method,path", backend_operations())
def test_backend_routes_refuse_end_user_tokens(client: Client, method: str, path: str) -> None:
    runtime = client.server.runtime
    concrete = (
        path.replace("{external_id}", new_user())
        .replace("{notification_id}", str(uuid.uuid4()))
        .replace("{schedule_id}", str(uuid.uuid4()))
    )
    body = (
        {
            "category": "security",
            "audience": {"type": "all"},
            "content": {"title": "x", "body": "y"},
        }
        if method == "POST" and path == "/v1/notifications"
        else {"locale": "en"}
    )
    before = fingerprint(runtime)
    user = new_user()
    # A valid end-user token; one with claims that look privileged; one sent as the key.
    attempts: list[dict[str, Any]] = [
        {"user": user},
        {"token": client.server.mint_token(user, **{"cognito:groups": ["admin"], "scope": "*"})},
        {"api_key": client.server.mint_token(user)},
        {"user": user, "api_key": "not-the-key"},
    ]
    for credentials in attempts:
        answer = client.request(method, concrete, body, **credentials)
        assert_error(answer, 401, "unauthorized")
    assert fingerprint(runtime) == before


def test_api_function_itself_refuses_a_backend_route_without_the_key(
    runtime: LocalRuntime, clean_runtime: LocalRuntime
) -> None:
    # Were the stage misconfigured, the function still refuses: an end user's claims
    # and no API key on a backend route, or no claims on an end-user route.
    event = load_event("api_send_notification.json")
    event["requestContext"]["identity"].update(apiKey=None, apiKeyId=None)
    event["requestContext"]["authorizer"] = {"claims": {"sub": new_user()}}
    before = fingerprint(runtime)

    answer = runtime.invoke("ApiFunction", event)

    assert answer["statusCode"] == 401
    assert json.loads(answer["body"])["error"] == "unauthorized"
    devices = load_event("api_register_device.json")
    devices["requestContext"].pop("authorizer", None)
    assert runtime.invoke("ApiFunction", devices)["statusCode"] == 401
    assert fingerprint(runtime) == before


def test_the_api_key_alone_does_not_act_as_an_end_user(client: Client) -> None:
    for method, path in (("GET", "/v1/me/devices"), ("PUT", "/v1/me/topics/sports")):
        assert_error(client.request(method, path, backend=True), 401, "unauthorized")


def _forged(credentials: LocalCredentials, sub: str) -> dict[str, str]:
    now = 2_000_000_000
    claims = {"sub": sub, "iss": ISSUER, "aud": CLIENT_ID, "token_use": "id", "exp": now}
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    genuine = credentials.mint_token("ben")
    head, _, signature = genuine.split(".")
    return {
        "alg none": f"{header}.{payload}.",
        "signed with the API key": jwt.encode(claims, credentials.api_key, algorithm="HS256"),
        "Ben's signature on Anna's claims": f"{head}.{payload}.{signature}",
        "another issuer": jwt.encode(
            {**claims, "iss": "https://cognito-idp.example/other"},
            credentials.signing_key,
            algorithm="HS256",
        ),
        "another app client": jwt.encode(
            {**claims, "aud": "someone-else"}, credentials.signing_key, algorithm="HS256"
        ),
    }


def test_forged_tokens_are_refused(client: Client, credentials: LocalCredentials) -> None:
    anna = new_user()
    registered = client.register(anna)
    assert registered.status == 201, registered.raw
    # Anna's own token reads her device: the route and the data are there to leak.
    genuine = client.request("GET", "/v1/me/devices", token=credentials.mint_token(anna))
    assert [d["device_id"] for d in genuine.body["devices"]] == [registered.body["device_id"]]
    for case, token in _forged(credentials, anna).items():
        answer = client.request("GET", "/v1/me/devices", token=token)
        body = assert_error(answer, 401, "unauthorized")
        assert "devices" not in body, case
        assert registered.body["device_id"] not in answer.raw.decode(), case
        # nor may a forged token write as Anna
        write = client.request("PUT", "/v1/me/topics/forged", token=token)
        assert_error(write, 401, "unauthorized")
    topics = client.request("GET", "/v1/me/topics", token=credentials.mint_token(anna))
    assert topics.body["topics"] == []


# -- secrets and tokens in logs ---------------------------------------------------------------


def _a_full_run(
    client: Client, runtime: LocalRuntime, credentials: LocalCredentials
) -> dict[str, Any]:
    """Registrations, preferences, refused requests and a full send, with failures that
    get logged on the way; returns the send and every token that was used."""
    # GIVEN users registering devices and preferences, each first met by a failure that
    # is logged (PostgreSQL dropping the connection, Redis unavailable: a 503 to retry)
    users = [new_user() for _ in range(6)]
    tokens: list[str] = []
    bearer_tokens: list[str] = []
    for n, user in enumerate(users):
        token = ios_token() if n % 2 else new_token()
        tokens.append(token)
        bearer = client.server.mint_token(user)
        bearer_tokens.append(bearer)
        registration = {"platform": "ios" if n % 2 else "android", "token": token}
        dropped = PostgresConnectionDropped(Trigger(limit=1))
        with all_active(runtime, [dropped]):
            failed = client.request("PUT", "/v1/me/devices", registration, token=bearer)
        assert failed.status == 503 and dropped.injected == 1, failed.raw
        answer = client.request("PUT", "/v1/me/devices", registration, token=bearer)
        assert answer.status == 201, answer.raw
        preferences = {"caps": {"news": 5}}
        with all_active(runtime, [RedisUnavailable(Trigger(limit=1))]):
            failed = client.request("PUT", "/v1/me/preferences", preferences, token=bearer)
        assert failed.status == 503, failed.raw
        assert client.request("PUT", "/v1/me/preferences", preferences, token=bearer).status == 200
    # ...some refused: a malformed token, a bad JWT, a wrong key, a body that is not JSON
    refused_token = "0" * 63
    tokens.append(refused_token)
    client.request(
        "PUT", "/v1/me/devices", {"platform": "ios", "token": refused_token}, user=users[0]
    )
    bad_jwt = client.server.mint_token(users[0], ttl=-60)
    bearer_tokens.append(bad_jwt)
    client.request("GET", "/v1/me/devices", token=bad_jwt)
    client.request("GET", f"/v1/notifications/{uuid.uuid4()}", api_key=credentials.api_key + "x")
    client.request("PUT", "/v1/me/devices", raw=b'{"token": "' + tokens[0].encode(), user=users[0])
    # ...and a send that reaches every device through the state machine, SNS throttling
    # it on the way (each retry logs the page's error)
    with all_active(runtime, [SnsBursts(bursts=2, burst_length=2, every=3)]):
        sent = client.send(
            {
                "category": "news",
                "audience": {"type": "users", "external_ids": users},
                "content": {"title": "Hi", "body": "x"},
            }
        ).body
        client.wait_until_done(sent["notification_id"])
    assert outcomes(client.deliveries(sent["notification_id"])) == {"sent": len(users)}

    return {**sent, "device_tokens": tokens, "bearer_tokens": bearer_tokens}


def test_secrets_and_device_tokens_never_appear_in_the_logs(
    client: Client, credentials: LocalCredentials, server_log: io.StringIO, tmp_path: Path
) -> None:
    runtime = client.server.runtime
    with function_log(tmp_path / "functions.log") as log_path:
        server_start = len(server_log.getvalue())
        sent = _a_full_run(client, runtime, credentials)
    tokens, bearer_tokens = sent.pop("device_tokens"), sent.pop("bearer_tokens")

    # WHEN every log line written meanwhile is read
    function_text = log_path.read_text(errors="replace")
    request_log = server_log.getvalue()[server_start:]
    # The scan reads the right lines: the failures above were logged.
    assert sent["notification_id"] in function_text and "ThrottledError" in function_text
    assert "dependency unavailable" in function_text
    assert "[api] PUT /api/v1/me/devices 201" in request_log

    # THEN no secret and no raw device token is in either
    secrets = {
        "the token signing key": credentials.signing_key,
        "the backend API key": credentials.api_key,
        **{f"end-user token {n}": token for n, token in enumerate(bearer_tokens)},
        **{f"device token {n}": token for n, token in enumerate(tokens)},
    }
    assert runtime.servers is not None
    password = ConnectionParams.from_url(runtime.servers.database_url).password
    if password:
        secrets["the database password"] = password
    for name, value in secrets.items():
        for log_name, text in (("function log", function_text), ("request log", request_log)):
            assert value not in text, f"{name} found in the {log_name}"
    # A token's signature alone is as good as the token: check those too.
    for token in bearer_tokens:
        signature = token.rsplit(".", 1)[-1]
        assert signature not in function_text and signature not in request_log
