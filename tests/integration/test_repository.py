"""The PostgreSQL repository against a real server: schema, audiences, pages, results."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError

from pushflow.adapters.postgres import Connection, ConnectionParams, Repository
from pushflow.domain.errors import Conflict, TransientDatabaseError
from pushflow.domain.models import (
    DeliveryResult,
    NotificationStatus,
    Outcome,
    PageRef,
    Recipient,
)
from pushflow_local.runtime import MIGRATIONS_DIR, LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users

pytestmark = pytest.mark.integration

REQUEST: dict[str, Any] = {
    "category": "news",
    "audience": {"type": "all"},
    "content": {"title": "Hi {first_name}", "body": "Your weekly digest is ready"},
}
EVERYONE: dict[str, Any] = {"type": "all"}
IOS = ("ios", False)
IOS_SANDBOX = ("ios", True)
ANDROID = ("android", False)

# A small audience whose every trait is known: who should each audience reach?
AUDIENCE = [
    SeedUser(
        "anna",
        "de",
        "Europe/Berlin",
        {"first_name": "Anna", "plan": "pro", "visits": 3},
        (IOS, ANDROID),
    ),
    SeedUser("ben", "en", "America/New_York", {"first_name": "Ben", "plan": "free"}, (ANDROID,)),
    SeedUser(
        "chiara", "de-AT", "Europe/Vienna", {"first_name": "Chiara", "plan": "pro"}, (IOS_SANDBOX,)
    ),
    SeedUser("dmitri", "fr", "UTC", {"plan": "free", "visits": 1}, (IOS, ANDROID)),
    SeedUser(
        "emi", "ja", "Asia/Tokyo", {"first_name": "Emi", "plan": "pro", "beta": True}, (ANDROID,)
    ),
    SeedUser("farid", "en-GB", "UTC", {"first_name": "Farid", "visits": 2}, (IOS,)),
]


@pytest.fixture
def repository(clean_runtime: LocalRuntime) -> Repository:
    return clean_runtime.services.repository


@pytest.fixture
def devices(clean_runtime: LocalRuntime) -> list[SeededDevice]:
    return seed_users(clean_runtime, AUDIENCE)


def users_of(devices: list[SeededDevice], *external_ids: str) -> set[int]:
    return {d.device_id for d in devices if d.user_external_id in external_ids}


def create(repository: Repository, **request: Any) -> str:
    notification, _ = repository.create_notification(
        {**REQUEST, **request}, "news", NotificationStatus.RUNNING
    )
    return notification.id


def delivery_rows(repository: Repository, notification_id: str) -> dict[int, tuple[Any, ...]]:
    rows = repository.run(
        "SELECT device_id, page, outcome, sns_message_id, error FROM deliveries"
        " WHERE notification_id = CAST(:id AS uuid)",
        id=notification_id,
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def reached(repository: Repository, audience: Mapping[str, Any]) -> set[int]:
    """Every device the audience's pages resolve to, asserting no page repeats one."""
    found: list[int] = []
    for page, _ in repository.plan_pages(audience, 500):
        found += [r["device_id"] for r in repository.resolve_page(audience, page, [])]
    assert len(found) == len(set(found))
    return set(found)


# -- schema -------------------------------------------------------------------


def test_running_the_migrations_again_applies_nothing(repository: Repository) -> None:
    assert repository.migrate(MIGRATIONS_DIR) == []

    applied = {row[0] for row in repository.run("SELECT version FROM schema_migrations")}
    assert applied == {path.stem for path in MIGRATIONS_DIR.glob("*.sql")}


# -- notifications ----------------------------------------------------------------


def test_the_same_idempotency_key_and_request_return_the_first_notification(
    repository: Repository,
) -> None:
    first, first_created = repository.create_notification(
        REQUEST, "news", NotificationStatus.ACCEPTED, "digest-2026-11-24"
    )

    again, again_created = repository.create_notification(
        dict(REQUEST), "news", NotificationStatus.ACCEPTED, "digest-2026-11-24"
    )

    assert (first_created, again_created) == (True, False)
    assert again.id == first.id
    assert again.request == REQUEST
    assert repository.run("SELECT count(*) FROM notifications") == [[1]]


def test_the_same_idempotency_key_with_another_request_is_a_conflict(
    repository: Repository,
) -> None:
    repository.create_notification(REQUEST, "news", NotificationStatus.ACCEPTED, "key-1")
    other = {**REQUEST, "content": {"title": "Other", "body": "Another send"}}

    with pytest.raises(Conflict, match="Idempotency-Key"):
        repository.create_notification(other, "news", NotificationStatus.ACCEPTED, "key-1")

    assert repository.run("SELECT count(*) FROM notifications") == [[1]]


def test_sends_without_an_idempotency_key_are_separate_notifications(
    repository: Repository,
) -> None:
    first, _ = repository.create_notification(REQUEST, "news", NotificationStatus.ACCEPTED)
    second, created = repository.create_notification(REQUEST, "news", NotificationStatus.ACCEPTED)

    assert created is True
    assert first.id != second.id


# -- pages -----------------------------------------------------------------------


def test_pages_cover_every_enabled_device_once_in_ranges_of_at_most_the_page_size(
    clean_runtime: LocalRuntime, repository: Repository
) -> None:
    # GIVEN 40 users with 1-2 devices each, a few devices disabled
    users = [
        SeedUser(f"pager-{i:03d}", devices=(IOS, ANDROID) if i % 2 else (ANDROID,))
        for i in range(40)
    ]
    devices = seed_users(clean_runtime, users)
    disabled = {d.device_id for d in devices[3:60:7]}
    repository.run(
        "UPDATE devices SET enabled = false WHERE id = ANY(CAST(:ids AS bigint[]))",
        ids=list(disabled),
    )
    enabled = {d.device_id for d in devices} - disabled

    # WHEN the audience is cut into pages of 7
    pages = repository.plan_pages(EVERYONE, 7)

    # THEN the pages are numbered in order, ranges ascend without overlapping,
    assert [page.number for page, _ in pages] == list(range(len(pages)))
    bounds = [(page.first_device_id, page.last_device_id) for page, _ in pages]
    assert all(first <= last for first, last in bounds)
    assert all(previous[1] < following[0] for previous, following in itertools.pairwise(bounds))
    # and each page holds at most 7 enabled devices, every enabled device on exactly one page
    covered: list[int] = []
    for page, count in pages:
        in_range = sorted(i for i in enabled if page.first_device_id <= i <= page.last_device_id)
        assert count == len(in_range) <= 7
        covered += in_range
    assert sorted(covered) == sorted(enabled)
    assert len(pages) == -(-len(enabled) // 7)


def test_an_audience_without_reachable_devices_has_no_pages(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    assert repository.plan_pages({"type": "users", "external_ids": ["nobody"]}, 500) == []


def test_a_page_resolves_to_its_enabled_devices_with_what_a_push_needs(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    anna_ios = next(d for d in devices if d.user_external_id == "anna" and d.platform == "ios")
    repository.run("UPDATE devices SET enabled = false WHERE id = :id", id=devices[-1].device_id)
    page = PageRef(0, devices[0].device_id, devices[-1].device_id)

    recipients = [
        Recipient.from_dict(r)
        for r in repository.resolve_page(EVERYONE, page, ["first_name", "visits"])
    ]

    assert [r.device_id for r in recipients] == [d.device_id for d in devices[:-1]]
    anna = next(r for r in recipients if r.device_id == anna_ios.device_id)
    assert (anna.platform, anna.sandbox, anna.endpoint_arn) == ("ios", False, anna_ios.endpoint_arn)
    assert (anna.locale, anna.time_zone) == ("de", "Europe/Berlin")
    # Only the attributes the content uses travel with the page.
    assert anna.attributes == {"first_name": "Anna", "visits": 3}
    chiara = next(r for r in recipients if r.user_id != anna.user_id and r.sandbox)
    assert chiara.attributes == {"first_name": "Chiara"}


def test_the_attributes_a_page_carries_are_the_users_values_as_stored(
    clean_runtime: LocalRuntime, repository: Repository
) -> None:
    stored = {
        "first_name": 'Zoë "Z" O\'Neil',
        "score": 1.5,
        "beta": True,
        "nickname": None,  # present, null: carried as None
        "tags": ["a", {"b": 2}],
        "big": 2**63 + 1,
        "unused": "not asked for",
    }
    (device,) = seed_users(clean_runtime, [SeedUser("zoe", "en", "UTC", stored, (IOS,))])
    asked = [*stored.keys() - {"unused"}, "absent", "x') IS NULL; DROP TABLE users; --"]

    (recipient,) = repository.resolve_page(
        EVERYONE, PageRef(0, device.device_id, device.device_id), sorted(asked)
    )

    assert recipient["attributes"] == {k: v for k, v in stored.items() if k != "unused"}
    assert repository.run("SELECT count(*) FROM users")[0][0] == 1


def test_a_page_without_placeholders_carries_no_attributes(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    page = PageRef(0, devices[0].device_id, devices[-1].device_id)

    recipients = repository.resolve_page(EVERYONE, page, [])

    assert len(recipients) == len(devices)
    assert all("attributes" not in r for r in recipients)


@pytest.mark.parametrize(
    ("audience", "users"),
    [
        ({"type": "all"}, ["anna", "ben", "chiara", "dmitri", "emi", "farid"]),
        ({"type": "users", "external_ids": ["ben", "emi", "nobody"]}, ["ben", "emi"]),
        ({"type": "filter", "where": {"locale": "de"}}, ["anna"]),
        ({"type": "filter", "where": {"locale": {"in": ["de", "de-AT"]}}}, ["anna", "chiara"]),
        ({"type": "filter", "where": {"attributes": {"plan": "pro"}}}, ["anna", "chiara", "emi"]),
        (
            {"type": "filter", "where": {"attributes": {"visits": {"in": [1, 2]}}}},
            ["dmitri", "farid"],
        ),
        ({"type": "filter", "where": {"attributes": {"beta": True}}}, ["emi"]),
        ({"type": "filter", "where": {"attributes": {"plan": "pro", "visits": 3}}}, ["anna"]),
        ({"type": "filter", "where": {"attributes": {"plan": "enterprise"}}}, []),
    ],
)
def test_an_audience_reaches_the_devices_of_its_users(
    repository: Repository, devices: list[SeededDevice], audience: Any, users: list[str]
) -> None:
    assert reached(repository, audience) == users_of(devices, *users)


def test_a_platform_filter_reaches_only_that_platform(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    ios_of_pro_users = {
        d.device_id
        for d in devices
        if d.platform == "ios" and d.user_external_id in ("anna", "chiara", "emi")
    }

    audience = {"type": "filter", "where": {"platform": "ios", "attributes": {"plan": "pro"}}}

    assert reached(repository, audience) == ios_of_pro_users
    assert reached(repository, {"type": "filter", "where": {"platform": {"in": ["android"]}}}) == {
        d.device_id for d in devices if d.platform == "android"
    }


def test_a_topic_reaches_its_subscribers_only(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    repository.run(
        "INSERT INTO topic_subscriptions (topic, user_id)"
        " SELECT t.topic, u.id FROM users u JOIN (VALUES ('football', 'ben'),"
        " ('football', 'dmitri'), ('tennis', 'anna')) AS t(topic, external_id)"
        " ON t.external_id = u.external_id"
    )

    assert reached(repository, {"type": "topic", "topic": "football"}) == users_of(
        devices, "ben", "dmitri"
    )
    assert reached(repository, {"type": "topic", "topic": "golf"}) == set()


@pytest.mark.parametrize(
    "value",
    [
        "Anna",
        'say "hi" \\o/',
        "Jörg Müller",
        "中文名字",
        "😀🎉",
        "tab\tand\nnewline",
        "\x1b[31mred",  # control characters from a bad import
        "\x7f",  # DEL: json.dumps writes \u007f, jsonb's text form keeps it raw
        42,
        1.5,
        True,
        ["a", "é"],
    ],
)
def test_the_measured_attribute_weight_bounds_what_a_page_carries(
    clean_runtime: LocalRuntime, repository: Repository, value: Any
) -> None:
    # GIVEN a recipient whose attribute repeats the value (strings), as a CRM sync might
    stored = value * 64 if isinstance(value, str) else value
    seed_users(clean_runtime, [SeedUser("weighed", attributes={"nickname": stored})])

    # WHEN Prepare measures the attributes its placeholders use
    stats = repository.attribute_stats(EVERYONE, ["nickname"])

    # THEN the measure is at least what the value weighs in the page's JSON (as Lambda
    # returns it, ensure_ascii), so pages sized from it fit in a state
    assert stats.max_bytes >= len(json.dumps(stored))
    assert stats.missing == {}


def test_recipients_without_a_placeholder_attribute_are_counted(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    stats = repository.attribute_stats(EVERYONE, ["first_name", "plan", "visits"])

    # dmitri (2 devices) has no first_name; farid (1) no plan; ben, chiara, emi (3) no visits
    assert stats.missing == {"first_name": 2, "plan": 1, "visits": 3}


# -- results ---------------------------------------------------------------------


def test_recording_the_same_page_twice_keeps_one_row_per_device(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    # GIVEN a page's results, one of whose endpoints SNS reported disabled
    notification_id = create(repository)
    dead = devices[1]
    results = [
        DeliveryResult(d.device_id, 0, Outcome.SENT, sns_message_id=f"msg-{d.device_id}")
        for d in devices
        if d is not dead
    ] + [DeliveryResult(dead.device_id, 0, Outcome.ENDPOINT_DISABLED, error="EndpointDisabled")]

    # WHEN the page is recorded, then recorded again as a retry would
    first = repository.record_deliveries(notification_id, 4, results)
    retried = repository.record_deliveries(
        notification_id, 4, [DeliveryResult(d.device_id, 0, Outcome.FAILED) for d in devices]
    )

    # THEN the rows went in once and the retry changed none of them
    assert (first, retried) == (len(devices), 0)
    rows = delivery_rows(repository, notification_id)
    assert len(rows) == len(devices)
    assert rows[dead.device_id] == (4, "endpoint_disabled", None, "EndpointDisabled")
    assert rows[devices[0].device_id] == (4, "sent", f"msg-{devices[0].device_id}", None)
    assert repository.outcome_counts(notification_id) == {
        "sent": len(devices) - 1,
        "endpoint_disabled": 1,
    }
    # AND the dead endpoint's device is disabled, so no later send pages it
    disabled = repository.run(
        "SELECT id, disabled_reason FROM devices WHERE NOT enabled ORDER BY id"
    )
    assert disabled == [[dead.device_id, "endpoint_disabled"]]
    assert dead.device_id not in reached(repository, EVERYONE)


def test_a_one_round_trip_copy_leaves_the_connection_in_step_when_it_fails(
    clean_runtime: LocalRuntime,
) -> None:
    assert clean_runtime.servers is not None
    params = ConnectionParams.from_url(clean_runtime.servers.database_url)
    conn = Connection(params.connect())
    try:
        conn.run("CREATE TEMP TABLE copied (id int PRIMARY KEY)")
        conn.copy_in("COPY copied FROM STDIN", "1\n2\n")
        assert conn.row_count == 2
        # A row that is there already fails the COPY as a whole, once it is in COPY.
        with pytest.raises(DatabaseError, match="duplicate key"):
            conn.copy_in("COPY copied FROM STDIN", "3\n1\n")
        # A COPY that fails before any data is sent.
        with pytest.raises(DatabaseError, match="not_there"):
            conn.copy_in("COPY not_there FROM STDIN", "1\n")
        # Each failure was read to its end: later statements get their own answers.
        assert conn.run("SELECT id FROM copied ORDER BY id") == [[1], [2]]
        assert conn.run("SELECT CAST(:n AS int) + 1", n=41) == [[42]]
    finally:
        conn.close()


def test_error_text_with_tabs_and_newlines_is_recorded_as_is(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    notification_id = create(repository)
    error = "InvalidParameter:\tToken\\n is\nnot valid"

    repository.record_deliveries(
        notification_id, 0, [DeliveryResult(devices[0].device_id, 0, Outcome.FAILED, error=error)]
    )

    assert delivery_rows(repository, notification_id)[devices[0].device_id][3] == error


def test_a_failed_page_fills_only_the_devices_without_a_row(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    # GIVEN a page of which two devices were already sent before it failed for good
    notification_id = create(repository)
    page = PageRef(2, devices[0].device_id, devices[-1].device_id)
    already = devices[:2]
    repository.record_deliveries(
        notification_id,
        page.number,
        [DeliveryResult(d.device_id, 0, Outcome.SENT, sns_message_id="m") for d in already],
    )

    # WHEN the page failure is recorded
    failed = repository.record_page_failure(
        notification_id, EVERYONE, page, "TransientDatabaseError: PostgreSQL: connection reset"
    )

    # THEN every other device of the page has a failed row naming the error
    assert failed == len(devices) - 2
    rows = delivery_rows(repository, notification_id)
    assert {device: row[1] for device, row in rows.items()} == {
        d.device_id: "sent" if d in already else "failed" for d in devices
    }
    assert {row[3] for device, row in rows.items() if row[1] == "failed"} == {
        "TransientDatabaseError: PostgreSQL: connection reset"
    }
    # A retried RecordPageFailure adds nothing.
    assert repository.record_page_failure(notification_id, EVERYONE, page, "again") == 0


def test_a_failed_page_gets_rows_only_for_its_own_audience(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    notification_id = create(repository)
    page = PageRef(0, devices[0].device_id, devices[-1].device_id)
    audience = {"type": "users", "external_ids": ["ben", "emi"]}

    repository.record_page_failure(notification_id, audience, page, "RetriesExhausted")

    assert set(delivery_rows(repository, notification_id)) == users_of(devices, "ben", "emi")


# -- connections -------------------------------------------------------------------


def test_a_dropped_connection_is_transient_and_the_next_call_reconnects(
    clean_runtime: LocalRuntime, repository: Repository
) -> None:
    # GIVEN the repository's connection, killed by the server (failover, idle timeout, admin)
    [[pid]] = repository.run("SELECT pg_backend_pid()")
    admin = ConnectionParams.from_url(clean_runtime.servers.database_url).connect()
    try:
        assert admin.run("SELECT pg_terminate_backend(:pid)", pid=pid) == [[True]]
        deadline = time.monotonic() + 10
        while admin.run("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid", pid=pid) != [[0]]:
            assert time.monotonic() < deadline, "the backend was not terminated"
            time.sleep(0.02)
    finally:
        admin.close()

    # WHEN the repository is used next, THEN the failure is one the ASL retries
    with pytest.raises(TransientDatabaseError):
        repository.run("SELECT 1")

    # AND the call after it works on a new connection
    [[new_pid]] = repository.run("SELECT pg_backend_pid()")
    assert new_pid != pid
    assert repository.run("SELECT count(*) FROM notifications") == [[0]]


def test_connections_of_finished_threads_are_not_left_open(repository: Repository) -> None:
    # Locally the Map's iterations run on fresh threads; each used to keep its own
    # connection open for good, so a send of a few dozen pages exhausted max_connections.
    def server_connections() -> int:
        [[count]] = repository.run(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pushflow'"
        )
        return int(count)

    before = server_connections()
    try:
        # WHEN 20 short-lived threads use the repository one after another
        for _ in range(20):
            worker = threading.Thread(target=repository.run, args=("SELECT 1",))
            worker.start()
            worker.join(timeout=10)
            assert not worker.is_alive()

        # THEN their connections were reused or closed, not left open on the server
        assert server_connections() <= before + 1
    finally:
        repository.close()


def test_a_sends_unchanging_part_is_read_once_and_its_status_never_from_there(
    repository: Repository,
) -> None:
    request = {"category": "marketing", "audience": EVERYONE, "content": {"title": "Hi"}}
    created, _ = repository.create_notification(request, "marketing", NotificationStatus.ACCEPTED)

    first = repository.get_send(created.id)
    repository.mark_running(created.id, "arn:aws:states:local:execution:x", 3, 1)

    # The request, audience and content are what was created, from the process's copy.
    assert repository.get_send(created.id) is first
    assert first.request == created.request and first.created_at == created.created_at
    # The status moves on in PostgreSQL; only get_notification says so.
    assert repository.get_notification(created.id).status is NotificationStatus.RUNNING
