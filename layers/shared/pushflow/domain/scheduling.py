"""Timed sends: once at a time, on a recurrence, or at a local time in each zone.

Every timed send is a schedule in PostgreSQL; each firing (or, for local-time
sends, each time-zone group) is a run with its own notification, counts and
status, and a run is unique by (schedule, run key) — so a duplicate firing
finds its run taken and sends nothing. EventBridge Scheduler starts the same
SendNotification state machine: a one-time schedule per notification
(execution named after it), a cron schedule per recurring send (execution
names cannot carry the firing time: Step Functions refuses `:` in names, so
the run record is what dedupes).

Local-time sends group the audience by the recipients' zones when the send
is created and make one one-time schedule per zone (rather than a Wait per
group in one execution): a zone costs one schedule, the groups are
independent executions visible one by one in the console, and no execution
stays open for up to a day. Recipients whose zone appears later are not
included.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol

from pushflow.domain.errors import Conflict, InvalidRequest
from pushflow.domain.models import Notification, NotificationStatus, Schedule, ScheduleKind
from pushflow.domain.ports import NotificationRepository, WorkflowStarter
from pushflow.domain.recurrence import Cron, Recurrence, check_recurrence, local_send_time
from pushflow.domain.registration import check_time_zone
from pushflow.domain.sending import check_request, execution_name

MAX_AHEAD = timedelta(days=366)
# EventBridge Scheduler puts the firing's time here when it starts the execution.
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"


class Schedules(Protocol):
    def once(
        self, name: str, at: datetime, execution_name: str, execution_input: Mapping[str, Any]
    ) -> None: ...

    def recurring(
        self,
        name: str,
        cron_expression: str,
        time_zone: str,
        start_at: datetime,
        end_at: datetime | None,
        execution_input: Mapping[str, Any],
    ) -> None: ...

    def delete(self, name: str) -> None: ...


class ScheduleRepository(NotificationRepository, Protocol):
    def create_schedule(
        self,
        kind: ScheduleKind,
        request: Mapping[str, Any],
        idempotency_key: str | None,
        fields: Mapping[str, Any],
        client_request: Mapping[str, Any],
    ) -> tuple[Schedule, bool]: ...

    def get_schedule(self, schedule_id: str) -> Schedule: ...
    def list_schedules(self, limit: int, before: str | None = None) -> list[Schedule]: ...

    def add_run(
        self,
        schedule_id: str,
        run_key: str,
        scheduled_time: datetime,
        request: Mapping[str, Any],
        category: str,
        status: NotificationStatus,
    ) -> tuple[Notification, bool]: ...

    def schedule_runs(self, schedule_id: str) -> list[tuple[str, str, Notification]]: ...
    def cancel_schedule(self, schedule_id: str) -> list[str]: ...
    def complete_schedule(self, schedule_id: str) -> None: ...
    def audience_time_zones(self, audience_spec: Mapping[str, Any]) -> list[str]: ...


def one_time_name(notification_id: str) -> str:
    return f"send-{notification_id}"


def recurring_name(schedule_id: str) -> str:
    return f"recur-{schedule_id}"


def _schedule_run(scheduler: Schedules, notification_id: str, at: datetime) -> None:
    """A one-time schedule that starts this notification's execution at `at`."""
    scheduler.once(
        one_time_name(notification_id),
        at,
        execution_name(notification_id),
        {"notification_id": notification_id},
    )


def parse_instant(raw: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{field} is not an ISO 8601 date-time", field) from None
    if moment.tzinfo is None:
        raise InvalidRequest(f"{field} needs a UTC offset, e.g. 2026-12-01T09:00:00+01:00", field)
    return moment


def _future(moment: datetime, now: datetime, field: str) -> datetime:
    if moment <= now:
        raise InvalidRequest(f"{field} is in the past", field)
    if moment > now + MAX_AHEAD:
        raise InvalidRequest(f"{field} is more than a year ahead", field)
    return moment


# -- creating ---------------------------------------------------------------------


def schedule_once(
    request: Mapping[str, Any],
    repository: ScheduleRepository,
    scheduler: Schedules,
    now: datetime,
    idempotency_key: str | None = None,
) -> tuple[Notification, bool]:
    """A send with `send_at`: stored as scheduled, started by a one-time schedule."""
    send_at = _future(parse_instant(request["send_at"], "send_at"), now, "send_at")
    send = {key: value for key, value in request.items() if key != "send_at"}
    check_request(send)
    schedule, created = repository.create_schedule(
        ScheduleKind.ONCE, send, idempotency_key, {"send_at": send_at}, request
    )
    notification, _ = repository.add_run(
        schedule.id, "once", send_at, send, send["category"], NotificationStatus.SCHEDULED
    )
    _schedule_run(scheduler, notification.id, send_at)
    return notification, created


def create_schedule(
    body: Mapping[str, Any],
    repository: ScheduleRepository,
    scheduler: Schedules,
    workflow: WorkflowStarter,
    now: datetime,
    minimum_interval: timedelta,
    idempotency_key: str | None = None,
) -> tuple[Schedule, bool]:
    send = body["send"]
    if "send_at" in send:
        raise InvalidRequest(
            "a schedule's send has no send_at; it fires by its schedule", "send.send_at"
        )
    if ("recurrence" in body) == ("local_time" in body):
        raise InvalidRequest("give exactly one of recurrence and local_time", "recurrence")
    try:
        check_request(send)
    except InvalidRequest as error:
        raise InvalidRequest(
            error.message, f"send.{error.field}" if error.field else "send"
        ) from None
    if "recurrence" in body:
        return _create_recurring(
            body, send, repository, scheduler, now, minimum_interval, idempotency_key
        )
    return _create_local_time(body, send, repository, scheduler, workflow, now, idempotency_key)


def _create_recurring(
    body: Mapping[str, Any],
    send: Mapping[str, Any],
    repository: ScheduleRepository,
    scheduler: Schedules,
    now: datetime,
    minimum_interval: timedelta,
    idempotency_key: str | None,
) -> tuple[Schedule, bool]:
    spec = body["recurrence"]
    time_zone = check_time_zone(spec["time_zone"], "recurrence.time_zone")
    try:
        cron = Cron.parse(spec["cron"])
    except InvalidRequest as error:
        raise InvalidRequest(error.message, "recurrence.cron") from None
    start_at = (
        _future(parse_instant(spec["start_at"], "recurrence.start_at"), now, "recurrence.start_at")
        if "start_at" in spec
        else now
    )
    end_at = parse_instant(spec["end_at"], "recurrence.end_at") if "end_at" in spec else None
    try:
        check_recurrence(Recurrence(cron, time_zone, start_at, end_at), now, minimum_interval)
    except InvalidRequest as error:
        raise InvalidRequest(error.message, f"recurrence.{error.field}") from None
    schedule, created = repository.create_schedule(
        ScheduleKind.RECURRING,
        send,
        idempotency_key,
        {"cron": cron.expression, "time_zone": time_zone, "start_at": start_at, "end_at": end_at},
        body,
    )
    scheduler.recurring(
        recurring_name(schedule.id),
        cron.expression,
        time_zone,
        start_at,
        end_at,
        {"schedule_id": schedule.id, "scheduled_time": SCHEDULED_TIME},
    )
    return schedule, created


def _local_date(raw: str) -> date:
    """The schema checks the form (`YYYY-MM-DD`); the calendar decides `2026-02-30`."""
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"local_time.date {raw!r} is not a date", "local_time.date") from None


def _create_local_time(
    body: Mapping[str, Any],
    send: Mapping[str, Any],
    repository: ScheduleRepository,
    scheduler: Schedules,
    workflow: WorkflowStarter,
    now: datetime,
    idempotency_key: str | None,
) -> tuple[Schedule, bool]:
    spec = body["local_time"]
    at = time.fromisoformat(spec["at"])
    on = _local_date(spec["date"]) if "date" in spec else None
    if on is not None and on < (now - timedelta(hours=14)).date():
        raise InvalidRequest("local_time.date is in the past everywhere", "local_time.date")
    if_passed = spec.get("if_passed", "tomorrow")
    schedule, created = repository.create_schedule(
        ScheduleKind.LOCAL_TIME,
        send,
        idempotency_key,
        {"local_time": at, "local_date": on, "if_passed": if_passed},
        body,
    )
    for zone in repository.audience_time_zones(send["audience"]):
        group = {**send, "audience": {**send["audience"], "time_zone": zone}}
        when = local_send_time(zone, at, now, if_passed, on)
        notification, _ = repository.add_run(
            schedule.id, zone, when, group, send["category"], NotificationStatus.SCHEDULED
        )
        send_at = datetime.fromisoformat(notification.send_at or when.isoformat())
        if send_at <= now:
            workflow.start(execution_name(notification.id), notification.id)
        else:
            _schedule_run(scheduler, notification.id, send_at)
    return schedule, created


# -- firing (in Prepare) --------------------------------------------------------------


def resolve_firing(
    firing: Mapping[str, Any], repository: ScheduleRepository
) -> tuple[Notification | None, str | None]:
    """The notification an execution sends, or why it sends nothing.

    A direct or one-time send names its notification; a recurring firing names
    its schedule and time, and creates its run — unless that run exists
    (a duplicate firing) or the schedule was cancelled.
    """
    if "notification_id" in firing:
        return repository.get_notification(firing["notification_id"]), None
    schedule = repository.get_schedule(firing["schedule_id"])
    if schedule.status != "active":
        return None, f"schedule {schedule.status}"
    scheduled_time = parse_instant(firing["scheduled_time"], "scheduled_time")
    notification, created = repository.add_run(
        schedule.id,
        scheduled_time.isoformat(),
        scheduled_time,
        schedule.request,
        schedule.request["category"],
        NotificationStatus.ACCEPTED,
    )
    if not created:
        return notification, "duplicate firing: this run was already started"
    return notification, None


# -- reading and cancelling ----------------------------------------------------------


def next_firing(
    schedule: Schedule, runs: list[tuple[str, str, Notification]], now: datetime
) -> str | None:
    if schedule.status != "active":
        return None
    if schedule.kind is ScheduleKind.RECURRING:
        assert schedule.cron and schedule.time_zone
        recurrence = Recurrence(
            Cron.parse(schedule.cron),
            schedule.time_zone,
            datetime.fromisoformat(schedule.start_at) if schedule.start_at else None,
            datetime.fromisoformat(schedule.end_at) if schedule.end_at else None,
        )
        upcoming = recurrence.next_firing(now)
        return upcoming.isoformat() if upcoming else None
    pending = [time for _, time, n in runs if n.status is NotificationStatus.SCHEDULED]
    return min(pending) if pending else None


def schedule_view(
    schedule_id: str, repository: ScheduleRepository, now: datetime
) -> dict[str, Any]:
    schedule = repository.get_schedule(schedule_id)
    runs = repository.schedule_runs(schedule_id)
    view = schedule.to_dict()
    view["next_firing"] = next_firing(schedule, runs, now)
    view["runs"] = [
        {"run_key": key, "scheduled_time": at, "notification": notification.to_dict()}
        for key, at, notification in runs
    ]
    return view


def cancel_schedule(
    schedule_id: str, repository: ScheduleRepository, scheduler: Schedules
) -> Schedule:
    """Stop future firings; runs that already happened keep their results."""
    schedule = repository.get_schedule(schedule_id)
    if schedule.status != "active":
        raise Conflict(f"this schedule is already {schedule.status}")
    for notification_id in repository.cancel_schedule(schedule_id):
        scheduler.delete(one_time_name(notification_id))
    if schedule.kind is ScheduleKind.RECURRING:
        scheduler.delete(recurring_name(schedule_id))
    return repository.get_schedule(schedule_id)
