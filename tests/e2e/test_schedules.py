"""Timed sends through the API: once, on a cron, and at each recipient's local time.

Requests go to ApiFunction as API Gateway events (the sample event with another
route and body). moto stores the EventBridge schedules but never fires them:
`runtime.fire_due_schedules()` fires what is due by the runtime's clock, as
EventBridge Scheduler would, and the real state machine sends. The clock only
moves forward and may already be ahead of the wall clock: every time here is
computed from `runtime.clock.now()`, and the clock is left ahead for the tests
after these. Tests look where a backend would (status codes, the schedule and
its runs, the notifications' counts) and, for what only shows inside, at the
schedules in moto and the messages SNS holds per endpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pushflow_local.runtime import ACCOUNT, REGION, STACK, LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users
from tests.conftest import load_event
from tests.e2e.test_deferral import next_transition
from tests.e2e.test_delivery_rules import message_counts
from tests.e2e.test_send import SEND_TIMEOUT_SECONDS, completed_path, deliveries, unique_prefix

pytestmark = pytest.mark.e2e

SAMPLE_EVENT: dict[str, Any] = load_event("api_send_notification.json")
START_EXECUTION = "arn:aws:scheduler:::aws-sdk:sfn:startExecution"
NOTHING_TO_SEND = ["Prepare", "ShouldSend", "NothingToSend"]
BERLIN, NEW_YORK, TOKYO = "Europe/Berlin", "America/New_York", "Asia/Tokyo"
NINE = time(9)


# -- the stack's schedule group ------------------------------------------------------------


@pytest.fixture(scope="module")
def scheduling(runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    """The runtime with a schedule group for ApiFunction's scheduler.

    The template's group when it declares one; otherwise one made here (with a
    role and a dead-letter queue), as the template's would be, for this module only.
    """
    services = runtime.services
    settings = services.settings
    if settings.schedule_group is not None:
        yield runtime
        return
    group = f"{STACK}-e2e-{uuid.uuid4().hex[:8]}"
    runtime.client("scheduler").create_schedule_group(Name=group)
    dead_letters = f"{group}-dlq"
    runtime.client("sqs").create_queue(QueueName=dead_letters)
    runtime.schedule_groups.append(group)
    services.__dict__.pop("scheduler", None)
    services.settings = dataclasses.replace(
        settings,
        schedule_group=group,
        scheduler_role_arn=f"arn:aws:iam::{ACCOUNT}:role/{group}-scheduler",
        schedule_dlq_arn=f"arn:aws:sqs:{REGION}:{ACCOUNT}:{dead_letters}",
        state_machine_arn=runtime.state_machine_arn,
    )
    try:
        yield runtime
    finally:
        services.settings = settings
        services.__dict__.pop("scheduler", None)
        runtime.schedule_groups.remove(group)


@pytest.fixture
def timed(scheduling: LocalRuntime, clean_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    """A clean runtime; schedules a test leaves in moto are deleted after it, so they
    never fire in the tests after this one."""
    before = set(moto_schedules(scheduling))
    yield clean_runtime
    scheduler = scheduling.client("scheduler")
    for (group, name), _ in moto_schedules(scheduling).items():
        if (group, name) not in before:
            scheduler.delete_schedule(GroupName=group, Name=name)


# -- the API, as API Gateway calls it ----------------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int
    body: Any


def call(
    runtime: LocalRuntime,
    method: str,
    path: str,
    body: Any = None,
    *,
    idempotency_key: str | None = None,
) -> Answer:
    """ApiFunction's answer to a backend's request (API key checked by API Gateway)."""
    event = copy.deepcopy(SAMPLE_EVENT)
    headers = {"Content-Type": "application/json", "x-api-key": "local-backend-key-example"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    resource = path
    parameters = None
    if path.startswith("/v1/schedules/"):
        resource = "/v1/schedules/{schedule_id}"
        parameters = {"schedule_id": path.rsplit("/", 1)[-1]}
    elif path.startswith("/v1/notifications/"):
        resource = "/v1/notifications/{notification_id}"
        parameters = {"notification_id": path.rsplit("/", 1)[-1]}
    event.update(
        resource=resource,
        path=path,
        httpMethod=method,
        headers=headers,
        multiValueHeaders={name: [value] for name, value in headers.items()},
        pathParameters=parameters,
        body=None if body is None else json.dumps(body),
    )
    event["requestContext"].update(resourcePath=resource, httpMethod=method, path=f"/api{path}")
    response = runtime.invoke("ApiFunction", event)
    return Answer(response["statusCode"], json.loads(response["body"] or "null"))


def get_schedule(runtime: LocalRuntime, schedule_id: str) -> dict[str, Any]:
    answer = call(runtime, "GET", f"/v1/schedules/{schedule_id}")
    assert answer.status == 200, answer.body
    view: dict[str, Any] = answer.body
    return view


def get_notification(runtime: LocalRuntime, notification_id: str) -> dict[str, Any]:
    answer = call(runtime, "GET", f"/v1/notifications/{notification_id}")
    assert answer.status == 200, answer.body
    notification: dict[str, Any] = answer.body
    return notification


def send_request(users: list[SeedUser]) -> dict[str, Any]:
    return {
        "category": "news",
        "audience": {"type": "users", "external_ids": [u.external_id for u in users]},
        "content": {"title": "Your morning briefing", "body": "Three things to know today."},
    }


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def instant(raw: str | None) -> datetime:
    assert raw is not None
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


def at_local(day: date, zone: str, wall: time = NINE) -> datetime:
    """The UTC instant a clock in `zone` reads `wall` on `day`."""
    return datetime.combine(day, wall, tzinfo=ZoneInfo(zone)).astimezone(UTC)


# -- EventBridge Scheduler (moto) and firing ----------------------------------------------------


def moto_schedules(runtime: LocalRuntime) -> dict[tuple[str, str], dict[str, Any]]:
    """(group, name) -> the schedule as GetSchedule returns it, in the runtime's groups."""
    scheduler = runtime.client("scheduler")
    found = {}
    for group in runtime.schedule_groups:
        for summary in scheduler.list_schedules(GroupName=group).get("Schedules", []):
            found[(group, summary["Name"])] = scheduler.get_schedule(
                GroupName=group, Name=summary["Name"]
            )
    return found


def moto_schedule(runtime: LocalRuntime, name: str) -> dict[str, Any] | None:
    group = runtime.services.settings.schedule_group
    assert group is not None
    return moto_schedules(runtime).get((group, name))


def fire(runtime: LocalRuntime) -> list[dict[str, Any]]:
    """Fire what is due by the runtime's clock; wait for the executions it started and
    return those of this test's sends (a schedule another module left may fire too)."""
    started = runtime.fire_due_schedules()
    executions = [runtime.wait(arn, timeout=SEND_TIMEOUT_SECONDS) for arn in started]
    return [e for e in executions if is_current(runtime, json.loads(e["input"]))]


def is_current(runtime: LocalRuntime, firing: Mapping[str, Any]) -> bool:
    """Whether a firing is for a notification or schedule in the database now."""
    table, key = (
        ("notifications", firing["notification_id"])
        if "notification_id" in firing
        else ("schedules", firing["schedule_id"])
    )
    rows = runtime.services.repository.run(f"SELECT 1 FROM {table} WHERE id::text = :id", id=key)
    return bool(rows)


def execution_arn(runtime: LocalRuntime, name: str) -> str:
    return f"{runtime.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"


def execution_exists(runtime: LocalRuntime, name: str) -> bool:
    sfn = runtime.client("stepfunctions")
    try:
        sfn.describe_execution(executionArn=execution_arn(runtime, name))
    except sfn.exceptions.ExecutionDoesNotExist:
        return False
    return True


def count_rows(runtime: LocalRuntime, table: str) -> int:
    [[count]] = runtime.services.repository.run(f"SELECT count(*) FROM {table}")
    return int(count)


def seed_each(runtime: LocalRuntime, users: list[SeedUser]) -> dict[str, list[SeededDevice]]:
    """external id -> that user's devices."""
    devices = seed_users(runtime, users)
    return {
        u.external_id: [d for d in devices if d.user_external_id == u.external_id] for u in users
    }


# -- one-time ------------------------------------------------------------------------------------


def test_a_send_at_a_time_is_scheduled_fired_at_that_time_and_its_schedule_deleted(
    timed: LocalRuntime,
) -> None:
    # GIVEN three users, and a send for an hour from now, given in Berlin's offset
    prefix = unique_prefix()
    users = [
        SeedUser(f"{prefix}-{n}", devices=[("ios", False), ("android", False)]) for n in range(3)
    ]
    devices = seed_users(timed, users)
    send_at = (timed.clock.now() + timedelta(hours=1)).replace(microsecond=0)
    request = {**send_request(users), "send_at": iso(send_at.astimezone(ZoneInfo(BERLIN)))}

    # WHEN the backend posts it
    answer = call(timed, "POST", "/v1/notifications", request, idempotency_key=f"{prefix}-once")

    # THEN it is accepted as scheduled for that instant, and nothing has started
    assert answer.status == 202, answer.body
    notification_id = answer.body["notification_id"]
    assert answer.body["status"] == "scheduled"
    assert instant(answer.body["send_at"]) == send_at
    assert answer.body["execution_arn"] is None
    assert not execution_exists(timed, f"send-{notification_id}")

    # AND EventBridge holds a one-time schedule named after the notification, at that
    # instant in UTC, to the minute it says (no flexible window), deleted once it fired
    schedule = moto_schedule(timed, f"send-{notification_id}")
    assert schedule is not None
    settings = timed.services.settings
    assert schedule["ScheduleExpression"] == f"at({send_at.astimezone(UTC):%Y-%m-%dT%H:%M:%S})"
    assert schedule.get("ScheduleExpressionTimezone", "UTC") == "UTC"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["ActionAfterCompletion"] == "DELETE"
    assert schedule["State"] == "ENABLED"
    # AND its target starts the SendNotification state machine through the universal target,
    # with the scheduler's role, a retry policy of its own and the dead-letter queue
    target = schedule["Target"]
    assert target["Arn"] == START_EXECUTION
    assert target["RoleArn"] == settings.scheduler_role_arn
    # Not the service default (retrying for a day): a push for a time is not sent hours late.
    assert 0 < target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 3600
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    if settings.schedule_dlq_arn:
        assert target["DeadLetterConfig"] == {"Arn": settings.schedule_dlq_arn}
    else:
        assert "DeadLetterConfig" not in target
    start = json.loads(target["Input"])
    assert start["StateMachineArn"] == timed.state_machine_arn
    assert start["Name"] == f"send-{notification_id}"
    assert json.loads(start["Input"]) == {"notification_id": notification_id}

    # AND the schedule is visible through the API as a one-time schedule, next firing then
    view = get_schedule(timed, answer.body["schedule_id"])
    assert (view["kind"], view["status"]) == ("once", "active")
    assert instant(view["next_firing"]) == send_at

    # WHEN 59 minutes pass
    timed.clock.advance_to(send_at - timedelta(minutes=1))
    early = fire(timed)

    # THEN nothing fired: no execution, still scheduled, the schedule still there
    assert early == []
    assert not execution_exists(timed, f"send-{notification_id}")
    assert get_notification(timed, notification_id)["status"] == "scheduled"
    assert moto_schedule(timed, f"send-{notification_id}") is not None

    # WHEN its time has come
    timed.clock.advance_to(send_at + timedelta(seconds=1))
    [execution] = fire(timed)

    # THEN the execution named after the notification sent it to every device, once
    assert execution["executionArn"] == execution_arn(timed, f"send-{notification_id}")
    assert execution["status"] == "SUCCEEDED"
    assert timed.state_path(execution["executionArn"]) == completed_path()
    notification = get_notification(timed, notification_id)
    assert notification["status"] == "completed"
    assert notification["counts"] == {"sent": len(devices)}
    assert notification["recipient_count"] == len(devices)
    assert message_counts(devices) == {d.device_id: 1 for d in devices}
    # AND the one-time schedule is gone, and firing again starts nothing
    assert moto_schedule(timed, f"send-{notification_id}") is None
    assert fire(timed) == []

    # AND the schedule shows its one run, completed with its counts
    view = get_schedule(timed, answer.body["schedule_id"])
    assert (view["kind"], view["status"], view["next_firing"]) == ("once", "completed", None)
    [run] = view["runs"]
    assert run["run_key"] == "once"
    assert instant(run["scheduled_time"]) == send_at
    assert run["notification"]["notification_id"] == notification_id
    assert run["notification"]["status"] == "completed"
    assert run["notification"]["counts"] == {"sent": len(devices)}


# -- recurring -------------------------------------------------------------------------------------


def daily_9am(zone: str) -> dict[str, str]:
    return {"cron": "0 9 * * ? *", "time_zone": zone}


def next_nine(after: datetime, zone: str) -> datetime:
    """The first 09:00 in `zone` after `after`, as a UTC instant."""
    day = after.astimezone(ZoneInfo(zone)).date()
    while at_local(day, zone) <= after:
        day += timedelta(days=1)
    return at_local(day, zone)


def test_a_daily_send_fires_each_day_with_its_own_run_until_cancelled(
    timed: LocalRuntime,
) -> None:
    # GIVEN two users, and a send every day at 09:00 in Berlin
    prefix = unique_prefix()
    users = [SeedUser(f"{prefix}-{n}", BERLIN, devices=[("android", False)]) for n in range(2)]
    devices = seed_users(timed, users)
    body = {"send": send_request(users), "recurrence": daily_9am(BERLIN)}
    now = timed.clock.now()
    first = next_nine(now, BERLIN)
    dues = [
        at_local(first.astimezone(ZoneInfo(BERLIN)).date() + timedelta(days=n), BERLIN)
        for n in range(4)
    ]

    # WHEN the backend creates the schedule
    answer = call(timed, "POST", "/v1/schedules", body)

    # THEN it is active, its next firing is the next 09:00 in Berlin, and it has no runs yet
    assert answer.status == 201, answer.body
    schedule_id = answer.body["schedule_id"]
    assert (answer.body["kind"], answer.body["status"]) == ("recurring", "active")
    assert instant(answer.body["next_firing"]) == dues[0]
    assert answer.body["runs"] == []
    listed = call(timed, "GET", "/v1/schedules")
    assert listed.status == 200, listed.body
    assert [s["schedule_id"] for s in listed.body["schedules"]] == [schedule_id]
    # AND EventBridge holds a cron schedule read in Berlin's zone, starting executions with
    # the schedule and the firing's time
    schedule = moto_schedule(timed, f"recur-{schedule_id}")
    assert schedule is not None
    assert schedule["ScheduleExpression"] == "cron(0 9 * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == BERLIN
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    start = json.loads(schedule["Target"]["Input"])
    assert schedule["Target"]["Arn"] == START_EXECUTION
    assert start["StateMachineArn"] == timed.state_machine_arn
    assert json.loads(start["Input"]) == {
        "schedule_id": schedule_id,
        "scheduled_time": "<aws.scheduler.scheduled-time>",
    }

    # WHEN the clock moves day by day past three 09:00s
    run_ids: list[str] = []
    for day, due in enumerate(dues[:3], start=1):
        timed.clock.advance_to(due - timedelta(minutes=1))
        assert fire(timed) == []
        timed.clock.advance_to(due + timedelta(seconds=1))
        [execution] = fire(timed)

        # THEN each 09:00 makes one run, keyed by its time, sent to every device
        assert execution["status"] == "SUCCEEDED"
        assert timed.state_path(execution["executionArn"]) == completed_path()
        runs = get_schedule(timed, schedule_id)["runs"]
        assert len(runs) == day
        run = runs[-1]
        assert instant(run["run_key"]) == instant(run["scheduled_time"]) == due
        assert run["notification"]["execution_arn"] == execution["executionArn"]
        assert run["notification"]["status"] == "completed"
        assert run["notification"]["counts"] == {"sent": len(devices)}
        run_ids.append(run["notification"]["notification_id"])
        assert message_counts(devices) == {d.device_id: day for d in devices}

    # AND each firing was its own notification, and the schedule shows the next 09:00
    assert len(set(run_ids)) == 3
    view = get_schedule(timed, schedule_id)
    assert view["status"] == "active"
    assert instant(view["next_firing"]) == dues[3]
    assert [instant(r["scheduled_time"]) for r in view["runs"]] == dues[:3]

    # WHEN the backend cancels it
    cancelled = call(timed, "DELETE", f"/v1/schedules/{schedule_id}")

    # THEN it is cancelled with no next firing, its past runs keep their results,
    # and its EventBridge schedule is gone
    assert cancelled.status == 200, cancelled.body
    assert (cancelled.body["status"], cancelled.body["next_firing"]) == ("cancelled", None)
    assert [r["notification"]["notification_id"] for r in cancelled.body["runs"]] == run_ids
    assert all(r["notification"]["status"] == "completed" for r in cancelled.body["runs"])
    assert all(
        r["notification"]["counts"] == {"sent": len(devices)} for r in cancelled.body["runs"]
    )
    assert moto_schedule(timed, f"recur-{schedule_id}") is None

    # AND two more days bring no firing and no message
    timed.clock.advance_to(dues[3] + timedelta(days=1, seconds=1))
    assert fire(timed) == []
    assert len(get_schedule(timed, schedule_id)["runs"]) == 3
    assert message_counts(devices) == {d.device_id: 3 for d in devices}

    # AND cancelling again is refused
    again = call(timed, "DELETE", f"/v1/schedules/{schedule_id}")
    assert again.status == 409, again.body
    assert again.body["error"] == "conflict"
    assert "cancelled" in again.body["message"]


def test_a_duplicate_firing_sends_nothing_a_second_time(timed: LocalRuntime) -> None:
    # GIVEN a daily send at 09:00 in Tokyo, and its first 09:00 come
    prefix = unique_prefix()
    users = [SeedUser(f"{prefix}-{n}", TOKYO) for n in range(2)]
    devices = seed_users(timed, users)
    due = next_nine(timed.clock.now(), TOKYO)
    answer = call(
        timed,
        "POST",
        "/v1/schedules",
        {"send": send_request(users), "recurrence": daily_9am(TOKYO)},
    )
    assert answer.status == 201, answer.body
    schedule_id = answer.body["schedule_id"]
    schedule = moto_schedule(timed, f"recur-{schedule_id}")
    assert schedule is not None
    timed.clock.advance_to(due + timedelta(seconds=1))

    # WHEN EventBridge delivers that firing, and then delivers it again (at least once)
    [first_arn] = timed._fire(schedule, due)
    first = timed.wait(first_arn, timeout=SEND_TIMEOUT_SECONDS)
    [second_arn] = timed._fire(schedule, due)
    second = timed.wait(second_arn, timeout=SEND_TIMEOUT_SECONDS)

    # THEN the first sent and the second, its own execution, found the run taken
    assert first_arn != second_arn
    assert (first["status"], second["status"]) == ("SUCCEEDED", "SUCCEEDED")
    assert timed.state_path(first_arn) == completed_path()
    assert timed.state_path(second_arn) == NOTHING_TO_SEND
    # AND every device got one message; the schedule has one run, with the first's counts
    assert message_counts(devices) == {d.device_id: 1 for d in devices}
    [run] = get_schedule(timed, schedule_id)["runs"]
    assert instant(run["scheduled_time"]) == due
    assert run["notification"]["execution_arn"] == first_arn
    assert run["notification"]["counts"] == {"sent": len(devices)}
    assert count_rows(timed, "notifications") == 1


# -- at each recipient's local time -------------------------------------------------------------


def test_at_9am_local_each_zone_gets_its_push_at_its_own_9am_on_a_dst_change_day(
    timed: LocalRuntime,
) -> None:
    # GIVEN the day New York changes its clocks, at 12:00 UTC: 09:00 is still ahead in
    # New York (07:00 or 08:00 there) and has passed in Berlin and Tokyo
    change = next_transition(NEW_YORK, timed.clock.now() + timedelta(hours=1))
    day = change.astimezone(ZoneInfo(NEW_YORK)).date()
    timed.clock.advance_to(datetime.combine(day, time(12), tzinfo=UTC))
    zones = [NEW_YORK, BERLIN, TOKYO]
    assert at_local(day, NEW_YORK) > timed.clock.now()
    assert all(at_local(day, zone) < timed.clock.now() for zone in (BERLIN, TOKYO))
    # 09:00 in New York that day is 13:00 UTC on EDT (spring) or 14:00 UTC on EST (fall),
    # an hour off the day before's.
    spring = (change + timedelta(hours=1)).astimezone(ZoneInfo(NEW_YORK)).utcoffset() == timedelta(
        hours=-4
    )
    assert at_local(day, NEW_YORK) == datetime.combine(day, time(13 if spring else 14), UTC)
    assert at_local(day - timedelta(days=1), NEW_YORK).time() == time(14 if spring else 13)

    # AND two audiences with one user in each zone: one whose passed zones go tomorrow,
    # one whose passed zones go now
    prefix = unique_prefix()
    users = {
        (if_passed, zone): SeedUser(
            f"{prefix}-{if_passed}-{zone}", "en", zone, devices=[("ios", False)]
        )
        for if_passed in ("tomorrow", "now")
        for zone in zones
    }
    devices = seed_each(timed, list(users.values()))
    device_of = {key: devices[user.external_id][0] for key, user in users.items()}

    # WHEN both are scheduled for 09:00 on that day
    created_at = timed.clock.now()
    schedule_ids = {}
    for if_passed in ("tomorrow", "now"):
        audience = [users[(if_passed, zone)] for zone in zones]
        local_time = {"at": "09:00", "date": day.isoformat(), "if_passed": if_passed}
        answer = call(
            timed,
            "POST",
            "/v1/schedules",
            {"send": send_request(audience), "local_time": local_time},
        )
        assert answer.status == 201, answer.body
        assert answer.body["kind"] == "local_time"
        schedule_ids[if_passed] = answer.body["schedule_id"]
    created_by = timed.clock.now()

    # THEN each schedule has one run per zone, keyed by the zone, each at 09:00 local:
    # New York on that day, the passed zones tomorrow or right away
    expected = {
        ("tomorrow", NEW_YORK): at_local(day, NEW_YORK),
        ("tomorrow", BERLIN): at_local(day + timedelta(days=1), BERLIN),
        ("tomorrow", TOKYO): at_local(day + timedelta(days=1), TOKYO),
        ("now", NEW_YORK): at_local(day, NEW_YORK),
    }
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for if_passed, schedule_id in schedule_ids.items():
        for run in get_schedule(timed, schedule_id)["runs"]:
            runs[(if_passed, run["run_key"])] = run
    assert set(runs) == set(users)
    for key, when in expected.items():
        assert instant(runs[key]["scheduled_time"]) == when, key
        assert instant(runs[key]["scheduled_time"]).astimezone(ZoneInfo(key[1])).time() == NINE
        assert runs[key]["notification"]["status"] == "scheduled"
        assert moto_schedule(timed, f"send-{runs[key]['notification']['notification_id']}")
    for zone in (BERLIN, TOKYO):
        assert created_at <= instant(runs[("now", zone)]["scheduled_time"]) <= created_by

    # AND the passed zones of the `now` audience were sent right away
    for zone in (BERLIN, TOKYO):
        notification_id = runs[("now", zone)]["notification"]["notification_id"]
        execution = timed.wait(
            execution_arn(timed, f"send-{notification_id}"), SEND_TIMEOUT_SECONDS
        )
        assert execution["status"] == "SUCCEEDED"
    sent: set[tuple[str, str]] = {("now", BERLIN), ("now", TOKYO)}
    assert message_counts(device_of.values()) == {
        device.device_id: int(key in sent) for key, device in device_of.items()
    }

    # WHEN the clock reaches each zone's 09:00 in turn
    for when in sorted(set(expected.values())):
        timed.clock.advance_to(when - timedelta(minutes=1))
        assert fire(timed) == []
        timed.clock.advance_to(when + timedelta(seconds=1))
        executions = fire(timed)

        # THEN exactly the runs due then are sent, and nobody else gets anything
        due = {key for key, at in expected.items() if at == when}
        assert len(executions) == len(due)
        assert all(e["status"] == "SUCCEEDED" for e in executions)
        sent |= due
        assert message_counts(device_of.values()) == {
            device.device_id: int(key in sent) for key, device in device_of.items()
        }

    # AND each run reached its own zone's recipient only, and both schedules are complete
    for key, run in runs.items():
        notification_id = run["notification"]["notification_id"]
        notification = get_notification(timed, notification_id)
        assert notification["status"] == "completed", key
        assert notification["counts"] == {"sent": 1}, key
        assert set(deliveries(timed, notification_id)) == {device_of[key].device_id}
    for schedule_id in schedule_ids.values():
        assert get_schedule(timed, schedule_id)["status"] == "completed"


# -- refused before anything is created ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Refusal:
    path: str
    # The body, built against the runtime's clock.
    body: Callable[[datetime], dict[str, Any]]
    field: str
    # What the message must say; `{minimum}` is the configured minimum interval.
    explains: tuple[str, ...]


ONE_SEND = send_request([SeedUser("someone")])


def recurring(**recurrence: str) -> dict[str, Any]:
    return {"send": ONE_SEND, "recurrence": recurrence}


REFUSALS = {
    "send_at in the past": Refusal(
        "/v1/notifications",
        lambda now: {**ONE_SEND, "send_at": iso(now - timedelta(minutes=1))},
        "send_at",
        ("send_at is in the past",),
    ),
    "send_at without an offset": Refusal(
        "/v1/notifications",
        lambda now: {**ONE_SEND, "send_at": f"{now + timedelta(hours=1):%Y-%m-%dT%H:%M:%S}"},
        "send_at",
        ("send_at",),
    ),
    "cron with 5 fields": Refusal(
        "/v1/schedules",
        lambda now: recurring(cron="0 9 ? * MON-FRI", time_zone=BERLIN),
        "recurrence.cron",
        ("6 fields",),
    ),
    "cron with ? in both day fields": Refusal(
        "/v1/schedules",
        lambda now: recurring(cron="0 9 ? * ? *", time_zone=BERLIN),
        "recurrence.cron",
        ("`?`",),
    ),
    "cron at hour 25": Refusal(
        "/v1/schedules",
        lambda now: recurring(cron="0 25 * * ? *", time_zone=BERLIN),
        "recurrence.cron",
        ("hours 25",),
    ),
    "cron on a date that never comes": Refusal(
        "/v1/schedules",
        lambda now: recurring(cron="0 9 31 FEB ? *", time_zone=BERLIN),
        "recurrence.cron",
        ("never fires",),
    ),
    "unknown time zone": Refusal(
        "/v1/schedules",
        lambda now: recurring(cron="0 9 * * ? *", time_zone="Mars/Olympus_Mons"),
        "recurrence.time_zone",
        ("unknown time zone", "Mars/Olympus_Mons"),
    ),
    "every 5 minutes": Refusal(
        "/v1/schedules",
        lambda now: recurring(cron="*/5 * * * ? *", time_zone=BERLIN),
        "recurrence.cron",
        ("every 5 minutes", "{minimum} minutes"),
    ),
    "end before start": Refusal(
        "/v1/schedules",
        lambda now: recurring(
            cron="0 9 * * ? *",
            time_zone=BERLIN,
            start_at=iso(now + timedelta(days=3)),
            end_at=iso(now + timedelta(days=2)),
        ),
        "recurrence.end_at",
        ("end_at must be after start_at",),
    ),
    "both recurrence and local_time": Refusal(
        "/v1/schedules",
        lambda now: {
            **recurring(cron="0 9 * * ? *", time_zone=BERLIN),
            "local_time": {"at": "09:00"},
        },
        "recurrence",
        ("exactly one of recurrence and local_time",),
    ),
    "neither recurrence nor local_time": Refusal(
        "/v1/schedules",
        lambda now: {"send": ONE_SEND},
        "recurrence",
        ("exactly one of recurrence and local_time",),
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_an_invalid_timed_send_is_refused_naming_the_field_and_creates_nothing(
    timed: LocalRuntime, case: str
) -> None:
    refusal = REFUSALS[case]
    minimum = timed.services.settings.min_recurrence_minutes
    schedules_before = set(moto_schedules(timed))

    # WHEN the backend posts the request
    answer = call(timed, "POST", refusal.path, refusal.body(timed.clock.now()))

    # THEN it is a 400 naming the field, saying what is wrong
    assert answer.status == 400, answer.body
    assert answer.body["error"] == "invalid_request"
    assert answer.body["field"] == refusal.field
    for words in refusal.explains:
        assert words.format(minimum=minimum) in answer.body["message"]
    # AND nothing was stored or scheduled
    assert count_rows(timed, "schedules") == 0
    assert count_rows(timed, "notifications") == 0
    assert set(moto_schedules(timed)) == schedules_before


# -- retries of the create ---------------------------------------------------------------------


@pytest.mark.parametrize("with_start", [False, True], ids=["from now", "from a start_at"])
def test_creating_a_schedule_twice_with_one_idempotency_key_makes_one_schedule(
    timed: LocalRuntime, with_start: bool
) -> None:
    # GIVEN a recurring send, and the key its backend retries with
    schedules_before = set(moto_schedules(timed))
    prefix = unique_prefix()
    recurrence = daily_9am(NEW_YORK)
    if with_start:
        recurrence["start_at"] = iso(timed.clock.now() + timedelta(days=1))
    body = {"send": send_request([SeedUser(f"{prefix}-user")]), "recurrence": recurrence}
    key = f"{prefix}-weekly-digest"

    # WHEN the same request comes twice, a moment apart
    first = call(timed, "POST", "/v1/schedules", body, idempotency_key=key)
    timed.clock.advance(timedelta(seconds=2))
    second = call(timed, "POST", "/v1/schedules", body, idempotency_key=key)

    # THEN the first created it and the second answers with the same schedule
    assert first.status == 201, first.body
    assert second.status == 200, second.body
    assert second.body["schedule_id"] == first.body["schedule_id"]
    # AND there is one schedule, in PostgreSQL and in EventBridge
    assert count_rows(timed, "schedules") == 1
    created = [name for (_, name) in set(moto_schedules(timed)) - schedules_before]
    assert created == [f"recur-{first.body['schedule_id']}"]

    # AND the same key with another request is refused, creating nothing
    other = call(
        timed,
        "POST",
        "/v1/schedules",
        {**body, "recurrence": daily_9am(TOKYO)},
        idempotency_key=key,
    )
    assert other.status == 409, other.body
    assert count_rows(timed, "schedules") == 1
    assert len(set(moto_schedules(timed)) - schedules_before) == 1
