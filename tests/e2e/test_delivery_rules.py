"""Who gets a push, through the real state machine: audiences, opt-outs, quiet hours,
caps, dead endpoints, throttling, and what the transactional categories bypass.

Every test seeds its own users (unique external ids, so unique SNS endpoints: moto
keeps endpoints and their messages for the whole session), sends the way the API
does, waits for the execution, then looks where a user would: the notification's
counts, the `deliveries` rows, the `devices` table and what SNS holds per endpoint.

Quiet hours are set relative to `runtime.clock.now()` in each user's own zone:
the session's clock only moves forward and may run ahead of the wall clock.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pushflow.domain import sending
from pushflow.domain.errors import ThrottledError
from pushflow.domain.models import Notification
from pushflow_local.demo import (
    CAP_REACHED,
    DEMO_REQUEST,
    DISABLED_ENDPOINT_EVERY,
    IN_QUIET_HOURS,
    OPTED_OUT,
    seed_demo,
)
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, disable_endpoints, seed_users, varied_users
from pushflow_local.sns import ANSWER_ERROR, Fault
from tests.e2e.test_send import (
    SEND_TIMEOUT_SECONDS,
    deliveries,
    sns_messages,
    unique_prefix,
    with_long_name,
)

pytestmark = pytest.mark.e2e


def request(audience: Mapping[str, Any], category: str = "news", **extra: Any) -> dict[str, Any]:
    return {
        "category": category,
        "audience": dict(audience),
        "content": {"title": "Your order shipped", "body": "It arrives on Friday."},
        **extra,
    }


def start(runtime: LocalRuntime, send_request: Mapping[str, Any]) -> Notification:
    """Store the send and start its execution, as the API does once the request is valid."""
    notification, created = sending.submit(
        send_request, runtime.services.repository, runtime.services.workflow
    )
    assert created and notification.execution_arn
    return notification


def finish(runtime: LocalRuntime, started: Notification) -> tuple[Notification, dict[str, Any]]:
    """Wait for the send's execution to end; the notification as it then stands."""
    execution = runtime.wait(started.execution_arn or "", timeout=SEND_TIMEOUT_SECONDS)
    return runtime.services.repository.get_notification(started.id), execution


def send(
    runtime: LocalRuntime, send_request: Mapping[str, Any]
) -> tuple[Notification, dict[str, Any]]:
    return finish(runtime, start(runtime, send_request))


def to_users(users: Iterable[SeedUser]) -> dict[str, Any]:
    return {"type": "users", "external_ids": [u.external_id for u in users]}


def set_preferences(
    runtime: LocalRuntime,
    external_id: str,
    *,
    opted_out: Sequence[str] = (),
    quiet_hours: tuple[str, str] | None = None,
    cap_overrides: Mapping[str, int] | None = None,
) -> None:
    """What the preferences API stores for a user (the cache is flushed by `clean_runtime`)."""
    quiet_start, quiet_end = quiet_hours or (None, None)
    runtime.services.repository.run(
        "INSERT INTO preferences (user_id, opted_out_categories, quiet_hours_start,"
        " quiet_hours_end, cap_overrides)"
        " SELECT id, CAST(:opted_out AS text[]), CAST(:start AS time), CAST(:end AS time),"
        " CAST(:caps AS jsonb) FROM users WHERE external_id = :external_id",
        external_id=external_id,
        opted_out=list(opted_out),
        start=quiet_start,
        end=quiet_end,
        caps=json.dumps(dict(cap_overrides or {})),
    )


def wall_clock(instant: datetime, zone: str) -> str:
    """What a clock in `zone` reads at `instant`, to the minute (a quiet-hours bound)."""
    return instant.astimezone(ZoneInfo(zone)).strftime("%H:%M")


def outcomes(runtime: LocalRuntime, notification_id: str) -> dict[int, str]:
    """device id -> its outcome for the send."""
    return {device: row[1] for device, row in deliveries(runtime, notification_id).items()}


def message_counts(devices: Iterable[SeededDevice]) -> dict[int, int]:
    """device id -> how many messages SNS (moto) holds for its endpoint."""
    devices = list(devices)
    recorded = sns_messages(d.endpoint_arn for d in devices)
    return {d.device_id: len(recorded[d.endpoint_arn]) for d in devices}


def device_enabled(runtime: LocalRuntime, device_ids: Iterable[int]) -> dict[int, bool]:
    rows = runtime.services.repository.run(
        "SELECT id, enabled FROM devices WHERE id = ANY(CAST(:ids AS bigint[]))",
        ids=list(device_ids),
    )
    return {row[0]: row[1] for row in rows}


# -- a known data set, exact counts ---------------------------------------------------------


def demo_outcome(index: int) -> str:
    """What the demo's `index`-th user (one device each) must get, by the demo's rules."""
    if index % 100 in OPTED_OUT:
        return "opted_out"
    if index % 100 in IN_QUIET_HOURS:
        return "quiet_hours"
    if index % 100 in CAP_REACHED:
        return "capped"
    if index % DISABLED_ENDPOINT_EVERY == 13:
        return "endpoint_disabled"
    return "sent"


def test_the_demo_audience_gets_exactly_its_expected_outcomes(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN the demo's 400 users: some opted out, in quiet hours, capped, or with a dead token
    expected = seed_demo(clean_runtime, 400)
    devices = clean_runtime.services.repository.run(
        "SELECT d.id, u.external_id, d.endpoint_arn FROM devices d"
        " JOIN users u ON u.id = d.user_id ORDER BY d.id"
    )
    assert len(devices) == 400
    expected_by_device = {
        device_id: demo_outcome(int(external_id.rsplit("-", 1)[1]))
        for device_id, external_id, _ in devices
    }
    assert set(expected) == {"sent", "opted_out", "quiet_hours", "capped", "endpoint_disabled"}

    # WHEN the demo send goes to everyone
    notification, execution = send(clean_runtime, DEMO_REQUEST)

    # THEN it completed with exactly the demo's counts, each device with its own outcome
    assert execution["status"] == "SUCCEEDED"
    assert notification.status.value == "completed"
    assert notification.counts == expected
    assert outcomes(clean_runtime, notification.id) == expected_by_device

    # AND only the sent devices got a message from SNS, one each
    recorded = sns_messages(arn for _, _, arn in devices)
    assert {device_id: len(recorded[arn]) for device_id, _, arn in devices} == {
        device_id: int(outcome == "sent") for device_id, outcome in expected_by_device.items()
    }

    # AND the devices whose endpoint SNS reported disabled are disabled in PostgreSQL
    dead = {d for d, outcome in expected_by_device.items() if outcome == "endpoint_disabled"}
    assert len(dead) == expected["endpoint_disabled"]
    enabled = device_enabled(clean_runtime, expected_by_device)
    assert {device for device, is_enabled in enabled.items() if not is_enabled} == dead


# -- audiences -------------------------------------------------------------------------------

# name -> (locale, devices, attributes); the audiences below pick among them.
AUDIENCE_USERS: dict[str, tuple[str, list[tuple[str, bool]], dict[str, Any]]] = {
    "ada": ("en", [("ios", False)], {"plan": "pro", "level": 3, "beta": True}),
    "ben": ("de", [("android", False)], {"plan": "free", "level": 1}),
    "cleo": ("de-AT", [("ios", True), ("android", False)], {"plan": "team", "level": 3}),
    "dan": ("fr", [("android", False)], {"plan": "pro", "level": 2, "beta": False}),
    "eva": ("ja", [("ios", False)], {"plan": "free"}),
    "finn": ("de", [("ios", False)], {"plan": "pro"}),
}
TOPIC = "release-notes"
TOPIC_SUBSCRIBERS = ("ben", "cleo", "eva")


@pytest.mark.parametrize(
    ("audience", "expected"),
    [
        pytest.param(
            {"type": "users", "external_ids": ["ada", "cleo"]},
            {("ada", "ios"), ("cleo", "ios"), ("cleo", "android")},
            id="users",
        ),
        pytest.param(
            {"type": "topic", "topic": TOPIC},
            {("ben", "android"), ("cleo", "ios"), ("cleo", "android"), ("eva", "ios")},
            id="topic",
        ),
        pytest.param(
            {"type": "filter", "where": {"attributes": {"plan": "pro"}}},
            {("ada", "ios"), ("dan", "android"), ("finn", "ios")},
            id="attribute-equals",
        ),
        pytest.param(
            {"type": "filter", "where": {"attributes": {"plan": {"in": ["pro", "team"]}}}},
            {("ada", "ios"), ("cleo", "ios"), ("cleo", "android"), ("dan", "android")}
            | {("finn", "ios")},
            id="attribute-in",
        ),
        pytest.param(
            {"type": "filter", "where": {"attributes": {"level": 3, "beta": True}}},
            {("ada", "ios")},
            id="attribute-number-and-boolean",
        ),
        pytest.param(
            {"type": "filter", "where": {"locale": "de"}},
            {("ben", "android"), ("finn", "ios")},
            id="locale",
        ),
        pytest.param(
            {"type": "filter", "where": {"locale": {"in": ["de", "de-AT"]}}},
            {("ben", "android"), ("cleo", "ios"), ("cleo", "android"), ("finn", "ios")},
            id="locale-in",
        ),
        pytest.param(
            {"type": "filter", "where": {"platform": "android"}},
            {("ben", "android"), ("cleo", "android"), ("dan", "android")},
            id="platform",
        ),
        pytest.param(
            {
                "type": "filter",
                "where": {
                    "locale": {"in": ["de", "de-AT"]},
                    "platform": "ios",
                    "attributes": {"plan": {"in": ["pro", "team"]}},
                },
            },
            {("cleo", "ios"), ("finn", "ios")},
            id="locale-platform-attribute",
        ),
    ],
)
def test_a_send_reaches_exactly_its_audience(
    clean_runtime: LocalRuntime, audience: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    # GIVEN six users in several locales, platforms and plans; three follow a topic
    prefix = unique_prefix()
    users = [
        SeedUser(f"{prefix}-{name}", locale, "UTC", attributes, devices)
        for name, (locale, devices, attributes) in AUDIENCE_USERS.items()
    ]
    devices = seed_users(clean_runtime, users)
    clean_runtime.services.repository.run(
        "INSERT INTO topic_subscriptions (topic, user_id)"
        " SELECT :topic, id FROM users WHERE external_id = ANY(CAST(:ids AS text[]))"
        " UNION ALL SELECT 'other-topic', id FROM users WHERE external_id = :other",
        topic=TOPIC,
        ids=[f"{prefix}-{name}" for name in TOPIC_SUBSCRIBERS],
        other=f"{prefix}-ada",
    )
    if audience["type"] == "users":
        audience = {**audience, "external_ids": [f"{prefix}-{n}" for n in audience["external_ids"]]}
    targeted = {
        d.device_id
        for d in devices
        if (d.user_external_id.removeprefix(f"{prefix}-"), d.platform) in expected
    }
    assert len(targeted) == len(expected)

    # WHEN a send goes to the audience
    notification, execution = send(clean_runtime, request(audience))

    # THEN exactly the audience's devices have a row, each sent
    assert execution["status"] == "SUCCEEDED"
    assert notification.status.value == "completed"
    assert notification.counts == {"sent": len(targeted)}
    assert outcomes(clean_runtime, notification.id) == dict.fromkeys(targeted, "sent")
    # AND SNS holds one message for each of them and none for anybody else
    assert message_counts(devices) == {d.device_id: int(d.device_id in targeted) for d in devices}


# -- placeholders nobody can fill ------------------------------------------------------------


def test_a_placeholder_some_recipients_lack_fails_the_send_before_anything_is_sent(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN three users with a nickname, one without the attribute and one with it null
    prefix = unique_prefix()
    users = [
        SeedUser(f"{prefix}-{n}", attributes={"nickname": f"Nick{n}"}, devices=[("ios", False)])
        for n in range(3)
    ]
    users += [
        SeedUser(f"{prefix}-none", attributes={"first_name": "Ida"}, devices=[("android", False)]),
        SeedUser(f"{prefix}-null", attributes={"nickname": None}, devices=[("ios", False)]),
    ]
    devices = seed_users(clean_runtime, users)
    personal = request(to_users(users))
    personal["content"]["title"] = "Hi {nickname}, your order shipped"

    # WHEN a send uses {nickname}
    notification, execution = send(clean_runtime, personal)

    # THEN the execution went from Prepare to the failure states and failed
    assert execution["status"] == "FAILED"
    assert clean_runtime.state_path(execution["executionArn"]) == [
        "Prepare",
        "RecordSendFailure",
        "SendFailed",
    ]
    # AND the notification is failed, naming the placeholder and how many recipients lack it
    assert notification.status.value == "failed"
    assert notification.error is not None
    assert re.search(r"\{nickname\} for 2 recipient", notification.error), notification.error
    # AND nothing was recorded or sent to anyone
    assert deliveries(clean_runtime, notification.id) == {}
    assert notification.counts == {}
    assert message_counts(devices) == {d.device_id: 0 for d in devices}


# -- frequency caps under concurrent sends ---------------------------------------------------


def test_two_concurrent_marketing_sends_respect_each_users_cap(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN 120 users on one or two devices, over several pages (a long name makes pages
    # small); three in four have lowered their marketing cap to 1, the others keep 2
    prefix = unique_prefix()
    users = with_long_name(varied_users(120, prefix=prefix), prefix)
    devices = seed_users(clean_runtime, users)
    capped_users = {u.external_id for i, u in enumerate(users) if i % 4 != 0}
    for external_id in capped_users:
        set_preferences(clean_runtime, external_id, cap_overrides={"marketing": 1})
    capped_devices = {d.device_id for d in devices if d.user_external_id in capped_users}
    default_devices = {d.device_id for d in devices} - capped_devices
    assert any(sum(d.user_external_id == u for d in devices) == 2 for u in capped_users)
    offer = request({"type": "all"}, category="marketing")
    offer["content"]["title"] = "{first_name}, 20% off this weekend"

    # WHEN two marketing sends start at once and run concurrently
    started = [start(clean_runtime, offer) for _ in range(2)]
    (first, first_run), (second, second_run) = [finish(clean_runtime, n) for n in started]
    assert (first_run["status"], second_run["status"]) == ("SUCCEEDED", "SUCCEEDED")
    assert second_run["startDate"] < first_run["stopDate"]
    assert first.page_count is not None and first.page_count > 1

    # THEN every device of a capped user got exactly one message, a default user's two
    assert message_counts(devices) == {
        d.device_id: 1 if d.device_id in capped_devices else 2 for d in devices
    }
    # AND each capped device was sent by one send and capped by the other
    rows = [outcomes(clean_runtime, n.id) for n in (first, second)]
    for device in capped_devices:
        assert sorted(r[device] for r in rows) == ["capped", "sent"]
    for device in default_devices:
        assert [r[device] for r in rows] == ["sent", "sent"]
    # AND a user with two devices got both from the same send (the cap counts sends)
    for external_id in capped_users:
        theirs = [d.device_id for d in devices if d.user_external_id == external_id]
        assert len({tuple(r[d] for d in theirs) for r in rows}) == 2
        assert all(len({r[d] for d in theirs}) == 1 for r in rows)
    # AND the two sends' counts add up: one push per capped device, two per default device
    for notification in (first, second):
        assert notification.status.value == "completed"
        assert set(notification.counts) <= {"sent", "capped"}
    assert first.counts.get("sent", 0) + second.counts.get("sent", 0) == (
        len(capped_devices) + 2 * len(default_devices)
    )
    assert first.counts.get("capped", 0) + second.counts.get("capped", 0) == len(capped_devices)


# -- quiet hours in the recipient's zone -----------------------------------------------------

# Berlin (CET/CEST), New York (EST/EDT), Sydney (AEST/AEDT, the other hemisphere),
# Tokyo (no DST), Kolkata (a half-hour offset).
QUIET_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Tokyo",
    "Asia/Kolkata",
]

# name -> (start, end) of the window relative to now, and whether now is inside it.
# Windows are tight (half an hour either side of now): a zone offset off by an hour
# (a DST rule applied wrongly) moves now out of the window, or into one.
WINDOWS: dict[str, tuple[timedelta, timedelta, bool]] = {
    "inside": (timedelta(minutes=-30), timedelta(minutes=30), True),
    "later": (timedelta(minutes=45), timedelta(hours=2), False),
    "ended": (timedelta(hours=-2), timedelta(minutes=-45), False),
    # Starts in an hour, ends in half an hour: 23 and a half hours across midnight.
    "all-but-now": (timedelta(hours=1), timedelta(minutes=30), True),
    "all-but-soon": (timedelta(minutes=30), timedelta(minutes=-30), False),
}


def test_quiet_hours_are_read_in_each_users_own_zone(clean_runtime: LocalRuntime) -> None:
    # GIVEN users in five zones, each with a quiet window set in their own wall-clock
    # time: some around now, some later, some over, some nearly all day across midnight
    prefix = unique_prefix()
    now = clean_runtime.clock.now()
    windows = [
        (SeedUser(f"{prefix}-{z}-{name}", "en", zone, devices=[("android", False)]), window)
        for z, zone in enumerate(QUIET_ZONES)
        for name, window in WINDOWS.items()
    ]
    users = [user for user, _ in windows]
    devices = seed_users(clean_runtime, users)
    quiet_now = {user.external_id for user, (_, _, inside) in windows if inside}
    for user, (opens, closes, _) in windows:
        bounds = (wall_clock(now + opens, user.time_zone), wall_clock(now + closes, user.time_zone))
        set_preferences(clean_runtime, user.external_id, quiet_hours=bounds)

    # WHEN a news send (quiet hours: suppress, the default) goes to all of them
    notification, execution = send(clean_runtime, request(to_users(users)))

    # THEN those inside their window are held back, the others sent, one row each
    assert execution["status"] == "SUCCEEDED"
    expected = {
        d.device_id: "quiet_hours" if d.user_external_id in quiet_now else "sent" for d in devices
    }
    assert outcomes(clean_runtime, notification.id) == expected
    assert notification.counts == dict(Counter(expected.values()))
    assert notification.status.value == "completed"
    # AND SNS got one message per sent device, none for the quiet ones
    assert message_counts(devices) == {d: int(o == "sent") for d, o in expected.items()}


# -- SNS throttling ----------------------------------------------------------------------------


def test_a_throttled_page_is_retried_and_no_device_gets_two_messages(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN 12 devices, and SNS throttling the first three publishes (the account's rate)
    prefix = unique_prefix()
    users = [
        SeedUser(f"{prefix}-{n}", devices=[("ios", False), ("android", False)]) for n in range(6)
    ]
    devices = seed_users(clean_runtime, users)
    assert clean_runtime.sns is not None
    throttling = Fault(ANSWER_ERROR, "Throttling", times=3)

    # WHEN the send runs
    with clean_runtime.sns.faulty(throttling):
        notification, execution = send(clean_runtime, request(to_users(users)))

    # THEN PublishBatch failed once with ThrottledError, and its retry finished the page
    assert execution["status"] == "SUCCEEDED"
    assert throttling.fired == 3
    [failure] = clean_runtime.failures["PublishBatchFunction"]
    assert isinstance(failure, ThrottledError)
    # AND every device is sent exactly once: one row, one message in SNS
    assert notification.status.value == "completed"
    assert notification.counts == {"sent": len(devices)}
    rows = deliveries(clean_runtime, notification.id)
    recorded = sns_messages(d.endpoint_arn for d in devices)
    for device in devices:
        _, outcome, message_id, _ = rows[device.device_id]
        assert outcome == "sent"
        assert list(recorded[device.endpoint_arn]) == [message_id]


# -- dead endpoints ----------------------------------------------------------------------------


def test_a_disabled_endpoint_disables_its_device_and_leaves_later_audiences(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN four devices, one of whose endpoint SNS has disabled (APNs rejected the token)
    prefix = unique_prefix()
    users = [
        SeedUser(f"{prefix}-{n}", devices=[("ios", False), ("android", False)]) for n in range(2)
    ]
    devices = seed_users(clean_runtime, users)
    dead, *alive = devices
    disable_endpoints(clean_runtime, [dead.endpoint_arn])

    # WHEN a send goes to them
    notification, _ = send(clean_runtime, request(to_users(users)))

    # THEN the dead one is `endpoint_disabled`, the others sent, and the send completed
    assert notification.status.value == "completed"
    assert outcomes(clean_runtime, notification.id) == {
        dead.device_id: "endpoint_disabled",
        **{d.device_id: "sent" for d in alive},
    }
    # AND the device is disabled in PostgreSQL
    assert device_enabled(clean_runtime, [d.device_id for d in devices]) == {
        dead.device_id: False,
        **{d.device_id: True for d in alive},
    }

    # WHEN another send goes to the same users
    again, _ = send(clean_runtime, request(to_users(users)))

    # THEN it no longer targets the dead device: no row for it, nothing published to it
    assert again.recipient_count == len(alive)
    assert outcomes(clean_runtime, again.id) == {d.device_id: "sent" for d in alive}
    assert message_counts(devices) == {dead.device_id: 0, **{d.device_id: 2 for d in alive}}


# -- transactional and security pushes ----------------------------------------------------------


def test_a_transactional_push_bypasses_quiet_hours_and_caps_but_never_goes_twice(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN users in quiet hours right now, and users whose caps allow nothing at all
    prefix = unique_prefix()
    now = clean_runtime.clock.now()
    zones = ["Europe/Berlin", "America/New_York", "Australia/Sydney"]
    quiet = [SeedUser(f"{prefix}-quiet-{z}", time_zone=z) for z in zones]
    capped = [SeedUser(f"{prefix}-capped-{n}") for n in range(3)]
    users = [*quiet, *capped]
    devices = seed_users(clean_runtime, users)
    for user in quiet:
        window = (
            wall_clock(now - timedelta(hours=1), user.time_zone),
            wall_clock(now + timedelta(hours=1), user.time_zone),
        )
        set_preferences(clean_runtime, user.external_id, quiet_hours=window)
    no_pushes = {"marketing": 0, "transactional": 0}
    for user in capped:
        set_preferences(clean_runtime, user.external_id, cap_overrides=no_pushes)
    is_quiet = {d.device_id: d.user_external_id.startswith(f"{prefix}-quiet") for d in devices}

    # WHEN a marketing send goes to them (the rules apply)
    held, _ = send(clean_runtime, request(to_users(users), category="marketing"))
    # THEN nobody gets it: the quiet users are in quiet hours, the others capped
    assert outcomes(clean_runtime, held.id) == {
        device: "quiet_hours" if quiet_device else "capped"
        for device, quiet_device in is_quiet.items()
    }

    # WHEN a transactional send goes to them
    receipt, _ = send(clean_runtime, request(to_users(users), category="transactional"))
    # THEN every device gets it
    assert receipt.status.value == "completed"
    assert receipt.counts == {"sent": len(devices)}
    assert message_counts(devices) == {d.device_id: 1 for d in devices}
    sent_rows = deliveries(clean_runtime, receipt.id)

    # WHEN the same transactional send runs again (an operator re-runs its execution)
    # after one device left, so that its pages are cut differently this time
    gone = devices[0]
    clean_runtime.services.repository.run(
        "UPDATE devices SET enabled = false WHERE id = :id", id=gone.device_id
    )
    rerun = clean_runtime.start_execution(f"rerun-{receipt.id}", {"notification_id": receipt.id})
    assert clean_runtime.wait(rerun, timeout=SEND_TIMEOUT_SECONDS)["status"] == "SUCCEEDED"

    # THEN no device got the push a second time, and the rows still say what happened
    assert message_counts(devices) == {d.device_id: 1 for d in devices}
    assert deliveries(clean_runtime, receipt.id) == sent_rows
    assert clean_runtime.services.repository.get_notification(receipt.id).counts == {
        "sent": len(devices)
    }


@pytest.mark.parametrize("category", ["security", "transactional"])
def test_security_and_transactional_pushes_reach_users_who_opted_out(
    clean_runtime: LocalRuntime, category: str
) -> None:
    # GIVEN users who opted out of every category they could name
    prefix = unique_prefix()
    users = [SeedUser(f"{prefix}-{n}") for n in range(3)]
    devices = seed_users(clean_runtime, users)
    everything = ["security", "transactional", "marketing", "news"]
    for user in users:
        set_preferences(clean_runtime, user.external_id, opted_out=everything)

    # WHEN a news send goes to them, THEN every device is opted out
    news, _ = send(clean_runtime, request(to_users(users)))
    assert news.counts == {"opted_out": len(devices)}

    # WHEN a security (or transactional) push goes to them, THEN every device gets it
    notice = request(to_users(users), category=category)
    notification, _ = send(clean_runtime, notice)
    assert notification.counts == {"sent": len(devices)}
    assert outcomes(clean_runtime, notification.id) == {d.device_id: "sent" for d in devices}
    assert message_counts(devices) == {d.device_id: 1 for d in devices}
