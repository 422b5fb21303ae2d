"""Hostile input through the real local HTTP server: refused with a clear 4xx, changing nothing.

Every request goes over a socket to `LocalApiServer` (the local API Gateway)
and on to ApiFunction. For each hostile request the test takes a fingerprint
of every table (its rows, hashed), of Redis and of the executions before and
after: a refusal must leave all of them as they were. No answer may be a 5xx,
and nothing may reach a RecursionError or an unhandled error in the logs.

Valid text that merely looks dangerous (SQL metacharacters, unicode, control
characters in free text) is not refused: it is stored verbatim, matches only
itself, and changes nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeedUser, seed_users
from pushflow_local.server import LocalApiServer
from tests.e2e.test_api import Answer, Client, assert_error, new_token, new_user

pytestmark = pytest.mark.e2e

TABLES = (
    "users",
    "devices",
    "preferences",
    "topic_subscriptions",
    "notifications",
    "deliveries",
    "schedules",
    "schedule_runs",
)
SQL_METACHARACTERS = ("'; DROP TABLE users; --", "%", "_", "\\")
# The path and query parameters a refusal may name.
PARAMETERS = {"external_id", "topic", "notification_id", "schedule_id", "limit", "after"}


# -- fixtures and helpers ---------------------------------------------------------------------


@contextlib.contextmanager
def function_log(path: Path) -> Iterator[Path]:
    """What the functions log goes to `path` for a while.

    The runtime sends the function log to `runtime.log_path` by the logger's service
    name; should the Powertools logger have been built before the runtime set that
    name (a module imported early), it would still write to stdout. This catches it
    either way: the handler Powertools registered is pointed at the file.
    """
    from pushflow.observability import logger

    handler = logger.registered_handler
    with path.open("a", encoding="utf-8") as stream:
        previous = handler.setStream(stream)  # type: ignore[attr-defined]
        try:
            yield path
        finally:
            handler.setStream(previous)  # type: ignore[attr-defined]


@pytest.fixture
def client(
    api: LocalApiServer,
    clean_runtime: LocalRuntime,
    server_log: io.StringIO,
    tmp_path: Path,
) -> Iterator[Client]:
    server_log_start = len(server_log.getvalue())
    with function_log(tmp_path / "functions.log") as log_path:
        yield Client(api)
    # Nothing may have reached an unhandled error on the way, whatever was answered.
    function_log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    new_server_lines = server_log.getvalue()[server_log_start:]
    for marker in ("RecursionError", "unhandled error", "Traceback"):
        assert marker not in function_log_text, function_log_text[-3000:]
        assert marker not in new_server_lines, new_server_lines[-3000:]
    _wait_and_clear(clean_runtime)


def _wait_and_clear(runtime: LocalRuntime) -> None:
    """Let accepted sends end, and drop schedules a timed send left behind."""
    sfn = runtime.client("stepfunctions")
    running = sfn.list_executions(stateMachineArn=runtime.state_machine_arn, statusFilter="RUNNING")
    for execution in running["executions"]:
        runtime.wait(execution["executionArn"], timeout=30)
    scheduler = runtime.client("scheduler")
    for group in runtime.schedule_groups:
        for schedule in scheduler.list_schedules(GroupName=group).get("Schedules", []):
            scheduler.delete_schedule(GroupName=group, Name=schedule["Name"])


def fingerprint(runtime: LocalRuntime) -> dict[str, Any]:
    """Everything a request could change: each table's rows (hashed), Redis, executions."""
    repository = runtime.services.repository
    print_ = {
        table: repository.run(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
            f" FROM {table} t"
        )[0]
        for table in TABLES
    }
    redis = runtime.services.store.client
    print_["redis"] = sorted(redis.keys("*"))
    # Newest first: a new execution changes the first one listed.
    newest = runtime.client("stepfunctions").list_executions(
        stateMachineArn=runtime.state_machine_arn, maxResults=1
    )["executions"]
    print_["executions"] = newest[0]["executionArn"] if newest else None
    return print_


def refused(
    runtime: LocalRuntime, send: Any, *, status: int | None = None, case: str = ""
) -> dict[str, Any]:
    """Send one request; it must be a 4xx with the error body and change nothing."""
    before = fingerprint(runtime)
    answer: Answer = send()
    assert 400 <= answer.status < 500, (case, answer.status, answer.raw[:300])
    body = assert_error(answer, answer.status)
    if status is not None:
        assert answer.status == status, (case, answer.status, answer.raw[:300])
    assert fingerprint(runtime) == before, case
    return body


def backend_routes(client: Client) -> list[tuple[str, str, str | None]]:
    """(method, path, what the user field is) for each route that takes a JSON body."""
    return [
        ("PUT", "/v1/me/devices", "user"),
        ("PUT", "/v1/me/preferences", "user"),
        ("PUT", f"/v1/users/{new_user()}", None),
        ("POST", "/v1/notifications", None),
        ("POST", "/v1/schedules", None),
    ]


def call(
    client: Client, method: str, path: str, who: str | None, raw: bytes, **headers: str
) -> Answer:
    if who == "user":
        return client.request(method, path, raw=raw, user="hostile-user", headers=headers)
    return client.request(method, path, raw=raw, backend=True, headers=headers)


def valid_send(**content: Any) -> dict[str, Any]:
    return {
        "category": "news",
        "audience": {"type": "users", "external_ids": ["nobody-at-all"]},
        "content": {"title": "Hello", "body": "World", **content},
    }


# -- invalid JSON ---------------------------------------------------------------------------------

INVALID_JSON = {
    "truncated": b'{"platform": "android", "token": ',
    "not json": b"{not json}",
    "empty": b"",
    "single quotes": b"{'platform': 'android'}",
    "trailing garbage": b'{"platform": "android"} trailing',
    "invalid UTF-8": b'{"platform": "android", "token": "\xff\xfe\xfd"}',
    "byte order mark": b'\xef\xbb\xbf{"platform": "android"}',
    "NaN": b'{"attributes": {"score": NaN}}',
    "Infinity": b'{"attributes": {"score": -Infinity}}',
    "out of range number": b'{"attributes": {"score": 1e999}}',
    "a 5,000-digit number": b'{"attributes": {"score": ' + b"9" * 5000 + b"}}",
    "an unpaired surrogate": b'{"attributes": {"nick": "\\ud800"}}',
    "an unpaired surrogate in a key": b'{"attributes": {"\\udfff": "x"}}',
}


@pytest.mark.parametrize("case", sorted(INVALID_JSON))
def test_invalid_json_is_refused_on_every_body_route(client: Client, case: str) -> None:
    runtime = client.server.runtime
    for method, path, who in backend_routes(client):
        refused(
            runtime,
            lambda m=method, p=path, w=who: call(client, m, p, w, INVALID_JSON[case]),
            status=400,
            case=f"{case}: {method} {path}",
        )


# -- wrong content types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=pushflow",
        "text/html; charset=utf-8",
    ],
)
def test_a_json_body_under_another_content_type_is_refused_with_415(
    client: Client, content_type: str
) -> None:
    runtime = client.server.runtime
    bodies = {
        "/v1/me/devices": {"platform": "android", "token": new_token()},
        "/v1/me/preferences": {"opted_out_categories": ["marketing"]},
        "/v1/notifications": valid_send(),
    }
    for method, path, who in backend_routes(client):
        body = bodies.get(path, {"locale": "en"})
        raw = json.dumps(body).encode()
        if path == "/v1/schedules":
            continue  # the schedule body needs a send; covered by the send route
        answer_body = refused(
            runtime,
            lambda m=method, p=path, w=who, r=raw: call(
                client, m, p, w, r, **{"Content-Type": content_type}
            ),
            status=415,
            case=f"{content_type}: {method} {path}",
        )
        assert "application/json" in answer_body["message"]


def test_a_form_encoded_body_is_refused(client: Client) -> None:
    refused(
        client.server.runtime,
        lambda: client.request(
            "PUT",
            "/v1/me/devices",
            raw=b"platform=android&token=" + new_token().encode(),
            user="form-user",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
    )


def test_json_with_a_charset_and_json_suffixed_types_are_taken(client: Client) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        answer = client.request(
            "PUT",
            "/v1/me/devices",
            {"platform": "android", "token": new_token()},
            user=new_user(),
            headers={"Content-Type": content_type},
        )
        assert answer.status == 201, (content_type, answer.raw)


# -- huge and deeply nested bodies ---------------------------------------------------------------


def nested(depth: int, kind: str = "array") -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    "case,raw",
    [
        ("10,000-deep arrays", nested(10_000)),
        ("10,000-deep objects", nested(10_000, "object")),
        ("100,000-deep arrays", nested(100_000)),
        (
            "10,000-deep arrays in content.data",
            b'{"category": "news", "audience": {"type": "all"},'
            b' "content": {"title": "x", "body": "y", "data": {"k": ' + nested(10_000) + b"}}}",
        ),
    ],
)
def test_deeply_nested_bodies_are_refused_not_a_recursion_error(
    client: Client, case: str, raw: bytes
) -> None:
    runtime = client.server.runtime
    for method, path, who in backend_routes(client):
        refused(runtime, lambda m=method, p=path, w=who: call(client, m, p, w, raw), case=case)


@pytest.mark.parametrize("depth", [33, 400, 900])
def test_nesting_past_the_limit_inside_free_form_data_is_refused_with_400(
    client: Client, depth: int
) -> None:
    # content.data takes any JSON value: without a limit these would go on to
    # the payload builder and SNS; 900 levels still parse, and must not 5xx.
    deep: Any = "leaf"
    for _ in range(depth - 3):
        deep = [deep]
    body = refused(
        client.server.runtime,
        lambda: client.send(valid_send(data={"k": deep})),
        status=400,
        case=f"depth {depth}",
    )
    assert "nested" in body["message"]


def _nested(levels: int) -> Any:
    deep: Any = "leaf"
    for _ in range(levels):
        deep = {"k": deep}
    return deep


def test_nesting_within_the_limit_is_taken(client: Client) -> None:
    # A `data` value may nest four levels (the document's DataValue4).
    answer = client.send(valid_send(data={"k": _nested(4)}))
    assert answer.status == 202, answer.raw


def test_data_nested_past_the_documented_limit_is_refused_naming_the_field(
    client: Client,
) -> None:
    body = refused(
        client.server.runtime,
        lambda: client.send(valid_send(data={"k": _nested(5)})),
        status=400,
        case="data nested five levels",
    )
    assert body["field"].startswith("content.data.k"), body


HUGE_BODIES = {
    "a 100,000-character title": valid_send(title="x" * 100_000),
    "100,000 recipients": {
        **valid_send(),
        "audience": {"type": "users", "external_ids": [f"u{i}" for i in range(100_000)]},
    },
    "a 60,000-character attribute": {"attributes": {"bio": "x" * 60_000}},
    "10,000 attributes": {"attributes": {f"k{i}": i for i in range(10_000)}},
}


@pytest.mark.parametrize("case", sorted(HUGE_BODIES))
def test_huge_bodies_are_refused(client: Client, case: str) -> None:
    body = HUGE_BODIES[case]
    is_send = "category" in body
    path = "/v1/notifications" if is_send else f"/v1/users/{new_user()}"
    refused(
        client.server.runtime,
        lambda: client.request("POST" if is_send else "PUT", path, body, backend=True),
        case=case,
    )


def test_a_body_over_api_gateways_10_mb_is_refused_with_413(client: Client) -> None:
    refused(
        client.server.runtime,
        lambda: client.request(
            "PUT", "/v1/me/devices", raw=b"[" + b"1," * (5 * 1024 * 1024) + b"1]", user="big"
        ),
        status=413,
    )


# -- unicode and control characters --------------------------------------------------------------

ODD_TEXT = {
    "NUL": "a\x00b",
    "escape sequence": "\x1b[31mred\x1b[0m",
    "newline": "line\nbreak",
    "right-to-left override": "abc\u202edef",
    "zero-width joiner": "a\u200db",
    "unicode digits": "\u0661\u0662\u0663",
    "emoji": "\U0001f600",
    "fullwidth": "\uff41\uff42\uff43",
}


@pytest.mark.parametrize("case", sorted(ODD_TEXT))
def test_unicode_and_control_characters_in_identifiers_are_refused(
    client: Client, case: str
) -> None:
    runtime = client.server.runtime
    text = ODD_TEXT[case]
    attempts = {
        "external_id": lambda: client.request(
            "PUT", f"/v1/users/{quote(text, safe='')}", {"locale": "en"}, backend=True
        ),
        "topic": lambda: client.request(
            "PUT", f"/v1/me/topics/{quote(text, safe='')}", user="odd-user"
        ),
        "token": lambda: client.register("odd-user", token=f"{new_token()}{text}"),
        "locale": lambda: client.register("odd-user", locale=f"de{text}"),
        "time_zone": lambda: client.register("odd-user", time_zone=f"Europe/{text}"),
        "category": lambda: client.send({**valid_send(), "category": f"news{text}"}),
        "topic audience": lambda: client.send(
            {**valid_send(), "audience": {"type": "topic", "topic": f"sports{text}"}}
        ),
        "Idempotency-Key": lambda: client.request(
            "POST",
            "/v1/notifications",
            valid_send(),
            backend=True,
            headers={"Idempotency-Key": f"key{text}"},
        ),
    }
    for field, attempt in attempts.items():
        if field == "Idempotency-Key" and (
            text.isprintable() or not text.isascii() or any(c in text for c in "\r\n\x00")
        ):
            continue  # printable text is a fine key; http.client sends no other header
        refused(runtime, attempt, case=f"{case} in {field}")


def test_object_keys_are_held_to_their_documented_key_patterns(client: Client) -> None:
    runtime = client.server.runtime
    for odd in ("key\x1b[31m", "key with spaces", "'; DROP TABLE users; --"):
        refused(runtime, lambda o=odd: client.send(valid_send(data={o: "x"})), status=400)
        refused(
            runtime,
            lambda o=odd: client.send(valid_send(localizations={o: {"title": "x"}})),
            status=400,
        )
        refused(
            runtime,
            lambda o=odd: client.send(
                {**valid_send(), "audience": {"type": "filter", "where": {"attributes": {o: 1}}}}
            ),
            status=400,
        )


def test_unicode_and_control_characters_in_free_text_are_stored_verbatim(
    client: Client,
) -> None:
    runtime = client.server.runtime
    user = new_user()
    text = "".join(v for k, v in ODD_TEXT.items() if k != "NUL")
    answer = client.request(
        "PUT", f"/v1/users/{user}", {"attributes": {"nick": text}}, backend=True
    )
    assert answer.status == 201, answer.raw
    assert answer.body["attributes"] == {"nick": text}
    sent = client.send(valid_send(title=text, body=text))
    assert sent.status == 202, sent.raw
    [(request,)] = runtime.services.repository.run(
        "SELECT request FROM notifications WHERE id = CAST(:id AS uuid)",
        id=sent.body["notification_id"],
    )
    assert request["content"]["title"] == request["content"]["body"] == text


def test_control_characters_in_the_raw_request_line_are_refused_and_not_echoed_to_the_log(
    client: Client, server_log: io.StringIO
) -> None:
    runtime = client.server.runtime
    host, port = client.host, client.port

    def raw_request() -> Answer:
        key = client.server.api_key
        request = (
            f"PUT /api/v1/users/a\x1b[2Jb HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        ).encode("latin-1")
        with socket.create_connection((host, port), timeout=10) as conn:
            conn.sendall(request)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = dict(
            line.decode("latin-1").split(": ", 1) for line in head.split(b"\r\n")[1:] if line
        )
        return Answer(status, {k.lower(): v for k, v in headers.items()}, payload)

    start = len(server_log.getvalue())
    refused(runtime, raw_request)
    logged = server_log.getvalue()[start:]
    assert "/api/v1/users/a" in logged
    assert "\x1b" not in logged


# -- SQL metacharacters in every string field ---------------------------------------------------

SAMPLES: dict[str, tuple[str, str, str | None, dict[str, Any]]] = {
    "device": (
        "PUT",
        "/v1/me/devices",
        "user",
        {"platform": "android", "token": "T" * 40, "locale": "de-AT", "time_zone": "Europe/Vienna"},
    ),
    "preferences": (
        "PUT",
        "/v1/me/preferences",
        "user",
        {
            "opted_out_categories": ["marketing"],
            "quiet_hours": {"start": "22:00", "end": "07:00"},
            "caps": {"news": 2},
        },
    ),
    "user": (
        "PUT",
        "/v1/users/meta-user",
        None,
        {"locale": "en", "time_zone": "UTC", "attributes": {"first_name": "Jo", "plan": "pro"}},
    ),
    "send to users": (
        "POST",
        "/v1/notifications",
        None,
        {
            "category": "news",
            "audience": {"type": "users", "external_ids": ["nobody-at-all"]},
            "quiet_hours": "suppress",
            "content": {
                "title": "Hello",
                "body": "World",
                "localizations": {"de": {"title": "Hallo", "body": "Welt"}},
                "data": {"deep_link": "app://x"},
                "sound": "default",
                "thread_id": "thread",
                "collapse_id": "collapse",
                "priority": "high",
                "image_url": "https://example.com/a.png",
            },
        },
    ),
    "send to a filter": (
        "POST",
        "/v1/notifications",
        None,
        {
            "category": "news",
            "audience": {
                "type": "filter",
                "where": {"locale": "de", "platform": "ios", "attributes": {"plan": "pro"}},
            },
            "content": {"title": "Hello", "body": "World"},
        },
    ),
    "send to a topic": (
        "POST",
        "/v1/notifications",
        None,
        {
            "category": "news",
            "audience": {"type": "topic", "topic": "meta-topic"},
            "content": {"title": "Hello", "body": "World"},
            "send_at": "2099-01-01T09:00:00Z",
        },
    ),
    "schedule": (
        "POST",
        "/v1/schedules",
        None,
        {
            "send": {
                "category": "news",
                "audience": {"type": "topic", "topic": "meta-topic"},
                "content": {"title": "Hello", "body": "World"},
            },
            "recurrence": {"cron": "0 9 * * ? *", "time_zone": "Europe/Berlin"},
        },
    ),
}


def string_mutations(document: Any, payload: str) -> Iterator[tuple[str, Any]]:
    """(where, document) with one string value, or one object key, replaced by `payload`."""
    if isinstance(document, str):
        yield "", payload
    elif isinstance(document, list):
        for index, item in enumerate(document):
            for where, changed in string_mutations(item, payload):
                copy = list(document)
                copy[index] = changed
                yield f"{index}.{where}".rstrip("."), copy
    elif isinstance(document, dict):
        for key, value in document.items():
            for where, changed in string_mutations(value, payload):
                yield f"{key}.{where}".rstrip("."), {**document, key: changed}
            renamed = {(payload if k == key else k): v for k, v in document.items()}
            yield f"{key} (as a key)", renamed


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_sql_metacharacters_in_every_string_field_are_refused_or_stored_verbatim(
    client: Client, sample: str
) -> None:
    runtime = client.server.runtime
    method, path, who, document = SAMPLES[sample]
    accepted = 0
    for payload in SQL_METACHARACTERS:
        for where, body in string_mutations(document, payload):
            before = fingerprint(runtime)
            raw = json.dumps(body).encode()
            answer = call(client, method, path, who, raw)
            case = f"{payload!r} in {where}"
            assert answer.status < 500, (case, answer.raw[:300])
            if answer.status >= 400:
                assert_error(answer, answer.status)
                assert fingerprint(runtime) == before, case
                continue
            accepted += 1
            _wait_and_clear(runtime)  # its execution must not change the next fingerprint
            if sample == "user" and "attributes" in where:
                # Stored and answered verbatim, as text, never as SQL.
                assert answer.body["attributes"] == body["attributes"], case
            if "notification_id" in (answer.body or {}):
                [(stored,)] = runtime.services.repository.run(
                    "SELECT request FROM notifications WHERE id = CAST(:id AS uuid)",
                    id=answer.body["notification_id"],
                )
                assert stored == body, case
    # The tables are all still there, and no request was mistaken for SQL.
    fingerprint(runtime)
    if sample in ("user", "send to users", "send to a filter"):
        assert accepted > 0  # free text, ids and attribute values take any characters


def test_sql_metacharacters_in_path_query_and_header_parameters(client: Client) -> None:
    runtime = client.server.runtime
    for payload in SQL_METACHARACTERS:
        encoded = quote(payload, safe="")
        attempts = [
            lambda e=encoded: client.request(
                "PUT", f"/v1/users/{e}", {"locale": "en"}, backend=True
            ),
            lambda e=encoded: client.request("PUT", f"/v1/me/topics/{e}", user="meta-user"),
            lambda e=encoded: client.request("DELETE", f"/v1/me/devices/{e}", user="meta-user"),
            lambda e=encoded: client.request("GET", f"/v1/notifications/{e}", backend=True),
            lambda e=encoded: client.request(
                "GET", f"/v1/notifications/{uuid.uuid4()}/deliveries?limit={e}", backend=True
            ),
            lambda e=encoded: client.request(
                "GET", f"/v1/notifications/{uuid.uuid4()}/deliveries?after={e}", backend=True
            ),
            lambda e=encoded: client.request("POST", f"/v1/notifications/{e}/cancel", backend=True),
            lambda e=encoded: client.request("GET", f"/v1/schedules/{e}", backend=True),
            lambda e=encoded: client.request("GET", f"/v1/schedules?limit={e}", backend=True),
        ]
        for attempt in attempts:
            before = fingerprint(runtime)
            answer = attempt()
            assert answer.status < 500, (payload, answer.raw[:300])
            if answer.status >= 400:
                # Not any 4xx: a parameter that breaks its pattern is a 400 naming it
                # (a device id that is no id is simply no such device: 404).
                error = assert_error(answer, answer.status)
                assert answer.status in (400, 404), (payload, answer.status, error)
                if answer.status == 400:
                    assert error.get("field") in PARAMETERS, (payload, error)
                assert fingerprint(runtime) == before, payload
            else:
                # Only what the parameter's pattern allows gets through (`_` is a
                # fine external id or topic), and then as itself.
                assert payload == "_", (payload, answer.status)
    users = runtime.services.repository.run("SELECT external_id FROM users ORDER BY 1")
    assert users == [["_"], ["meta-user"]]  # `_` by PUT /v1/users/_, the other subscribing
    assert runtime.services.repository.run("SELECT topic FROM topic_subscriptions") == [["_"]]
    # As an Idempotency-Key (any printable text): taken, verbatim, and still idempotent.
    key = SQL_METACHARACTERS[0]
    first = client.request(
        "POST", "/v1/notifications", valid_send(), backend=True, headers={"Idempotency-Key": key}
    )
    again = client.request(
        "POST", "/v1/notifications", valid_send(), backend=True, headers={"Idempotency-Key": key}
    )
    assert (first.status, again.status) == (202, 200)
    assert first.body["notification_id"] == again.body["notification_id"]


def test_idempotency_keys_postgresql_could_not_index_are_refused(client: Client) -> None:
    for key in ("k" * 129, "k" * 10_000):
        body = refused(
            client.server.runtime,
            lambda k=key: client.request(
                "POST",
                "/v1/notifications",
                valid_send(),
                backend=True,
                headers={"Idempotency-Key": k},
            ),
            status=400,
        )
        assert body.get("field") == "Idempotency-Key"


def test_metacharacters_in_audiences_match_only_themselves(client: Client) -> None:
    runtime = client.server.runtime
    # GIVEN users whose ids and attributes a LIKE pattern or injected SQL would confuse
    plan = SQL_METACHARACTERS[0]
    users = [
        SeedUser("meta_1", attributes={"plan": plan}, devices=[("android", False)]),
        SeedUser("metaX1", attributes={"plan": "free"}, devices=[("android", False)]),
        SeedUser("meta\\1", attributes={"plan": "%"}, devices=[("android", False)]),
    ]
    devices = {d.user_external_id: d.device_id for d in seed_users(runtime, users)}

    def reached(audience: Mapping[str, Any]) -> set[str]:
        answer = client.send({**valid_send(), "audience": dict(audience)})
        assert answer.status == 202, answer.raw
        done = client.wait_until_done(answer.body["notification_id"])
        assert done["status"] == "completed", done
        rows = client.deliveries(answer.body["notification_id"])
        by_device = {v: k for k, v in devices.items()}
        return {by_device[int(r["device_id"])] for r in rows if r["outcome"] == "sent"}

    # THEN each pattern-looking value matches exactly the user who has it
    assert reached({"type": "users", "external_ids": ["meta_1"]}) == {"meta_1"}
    assert reached({"type": "users", "external_ids": ["meta%", "%"]}) == set()
    assert reached({"type": "users", "external_ids": ["meta\\1"]}) == {"meta\\1"}
    where = {"type": "filter", "where": {"attributes": {"plan": plan}}}
    assert reached(where) == {"meta_1"}
    assert reached({"type": "filter", "where": {"attributes": {"plan": "%"}}}) == {"meta\\1"}
    assert reached({"type": "filter", "where": {"attributes": {"plan": "_ree"}}}) == set()
    assert runtime.services.repository.run("SELECT count(*) FROM users")[0][0] == 3


# -- device tokens and platforms ------------------------------------------------------------

BAD_TOKENS = {
    "ios: not hexadecimal": ("ios", "z" * 64),
    "ios: 63 characters": ("ios", "a" * 63),
    "ios: 201 characters": ("ios", "a" * 201),
    "ios: with spaces": ("ios", "ab " * 22),
    "ios: unicode digits": ("ios", "\u0661" * 64),
    "ios: fullwidth hex": ("ios", "\uff41" * 64),
    "android: 31 characters": ("android", "a" * 31),
    "android: 4,097 characters": ("android", "a" * 4097),
    "android: 60,000 characters": ("android", "a" * 60_000),
    "android: a slash": ("android", "a" * 40 + "/x"),
    "android: a newline": ("android", "a" * 40 + "\n"),
    "android: SQL": ("android", "a" * 40 + "'; DROP TABLE devices; --"),
    "empty": ("android", ""),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_malformed_and_oversized_tokens_are_refused(client: Client, case: str) -> None:
    platform, token = BAD_TOKENS[case]
    body = refused(
        client.server.runtime,
        lambda: client.request(
            "PUT", "/v1/me/devices", {"platform": platform, "token": token}, user="token-user"
        ),
        case=case,
    )
    if len(token) < 60_000:
        assert "token" in (body.get("field") or body["message"])


@pytest.mark.parametrize("token", [None, 12345, ["a" * 40], {"value": "a" * 40}, True], ids=repr)
def test_tokens_that_are_not_strings_are_refused(client: Client, token: Any) -> None:
    refused(
        client.server.runtime,
        lambda: client.request(
            "PUT", "/v1/me/devices", {"platform": "android", "token": token}, user="token-user"
        ),
        status=400,
    )


@pytest.mark.parametrize(
    "platform", ["windows", "IOS", "Android", "ios ", "", "apns", "fcm", None, 1, ["ios"]], ids=repr
)
def test_unknown_platforms_are_refused(client: Client, platform: Any) -> None:
    body = refused(
        client.server.runtime,
        lambda: client.request(
            "PUT", "/v1/me/devices", {"platform": platform, "token": new_token()}, user="p-user"
        ),
        status=400,
    )
    assert "platform" in (body.get("field") or body["message"])
    for send_platform in (platform, {"in": [platform]}):
        refused(
            client.server.runtime,
            lambda p=send_platform: client.send(
                {**valid_send(), "audience": {"type": "filter", "where": {"platform": p}}}
            ),
            status=400,
        )
