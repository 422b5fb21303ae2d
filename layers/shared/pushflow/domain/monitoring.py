"""What an operator watches: sends newest first, and one send's execution joined with
its pages (the console reads these through the API, as any backend may).

No AWS SDK here: the execution's parts come from an `ExecutionReader` adapter.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from pushflow.domain.categories import CATEGORIES
from pushflow.domain.errors import InvalidRequest, NotFound
from pushflow.domain.models import Device, Notification, NotificationStatus, User
from pushflow.domain.registration import preferences_view
from pushflow.domain.rules import DEFAULT_PREFERENCES, Preferences

# A send's events as the console shows them: the parent's history stays small
# (~20 events a pass), this is a guard, not a page size.
MAX_PARENT_EVENTS = 1000


class SendDirectory(Protocol):
    def get_notification(self, notification_id: str) -> Notification: ...

    def list_notifications(
        self,
        limit: int,
        before: tuple[datetime, str] | None = None,
        status: str | None = None,
        category: str | None = None,
    ) -> list[Notification]: ...

    def outcome_counts(self, notification_id: str) -> dict[str, int]: ...

    def page_summaries(
        self, notification_id: str, first_page: int, last_page: int
    ) -> list[dict[str, Any]]: ...


class ExecutionReader(Protocol):
    def describe_execution(self, execution_arn: str) -> dict[str, Any] | None: ...

    def history(self, execution_arn: str, max_events: int) -> list[dict[str, Any]]: ...

    def map_runs(self, execution_arn: str) -> list[dict[str, Any]]: ...

    def map_run_children(
        self, map_run_arn: str, limit: int, next_token: str | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...


# -- the sends list ------------------------------------------------------------------


def encode_cursor(notification: Notification) -> str:
    raw = json.dumps([notification.created_at, notification.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, notification_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), str(uuid.UUID(notification_id))
    except (ValueError, TypeError, AttributeError, binascii.Error):
        raise InvalidRequest("cursor must be a `next` value of a previous page", "cursor") from None


def sends_page(
    directory: SendDirectory,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    category: str | None = None,
) -> dict[str, Any]:
    """A page of sends, newest first. A send under way carries its counts so far."""
    before = decode_cursor(cursor) if cursor else None
    sends = directory.list_notifications(limit, before, status, category)
    views = []
    for send in sends:
        view = send_view(send)
        if send.status in (NotificationStatus.RUNNING, NotificationStatus.ACCEPTED):
            view["counts"] = directory.outcome_counts(send.id)
        views.append(view)
    following = encode_cursor(sends[-1]) if len(sends) == limit else None
    return {"notifications": views, "next": following}


def send_view(send: Notification) -> dict[str, Any]:
    """The notification with what a list shows about it: its audience's kind, its
    title and its duration so far."""
    view = send.to_dict()
    audience = send.request.get("audience") or {}
    content = send.request.get("content") or {}
    view["audience_type"] = audience.get("type")
    view["title"] = content.get("title")
    started = send.started_at or send.created_at
    if started and send.completed_at:
        seconds = (
            datetime.fromisoformat(send.completed_at) - datetime.fromisoformat(started)
        ).total_seconds()
        view["duration_seconds"] = round(seconds, 3)
    else:
        view["duration_seconds"] = None
    return view


# -- one send's execution ------------------------------------------------------------------


def execution_view(
    notification_id: str,
    directory: SendDirectory,
    executions: ExecutionReader,
    first_page: int,
    pages: int,
    child_token: str | None = None,
) -> dict[str, Any]:
    """The send's parent execution (status, events), its Map Runs with their child
    counts and one page of children, and its pages first_page.. as its rows tell."""
    send = directory.get_notification(notification_id)
    view: dict[str, Any] = {
        "notification": send_view(send),
        "counts": directory.outcome_counts(notification_id),
        "execution": None,
        "events": [],
        "states": {},
        "map_runs": [],
        "pages": directory.page_summaries(notification_id, first_page, first_page + pages - 1),
        "first_page": first_page,
        "page_count": send.page_count,
    }
    if not send.execution_arn:
        return view
    described = executions.describe_execution(send.execution_arn)
    if described is None:
        return view
    view["execution"] = described
    view["events"] = executions.history(send.execution_arn, MAX_PARENT_EVENTS)
    view["states"] = state_statuses(view["events"])
    for map_run in executions.map_runs(send.execution_arn):
        children, following = executions.map_run_children(
            map_run["map_run_arn"], pages, child_token
        )
        # Each child with its states, as the parent's, not its raw events: a page of
        # children stays small whatever their retries.
        shown = [
            {
                **{key: value for key, value in child.items() if key != "events"},
                "states": state_statuses(child.get("events", [])),
            }
            for child in children
        ]
        view["map_runs"].append({**map_run, "children": shown, "next_children": following})
    return view


def state_statuses(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each state's status in an execution, from its events: `running` once entered,
    `succeeded` once exited, `failed` when an error ended it, `caught` when it exited
    after an error (a Catch took it); `retries` counts the attempts that failed
    before another one started."""
    states: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for event in events:
        kind = str(event.get("type", ""))
        entered = event.get("stateEnteredEventDetails")
        exited = event.get("stateExitedEventDetails")
        if entered:
            current = states.setdefault(
                str(entered["name"]), {"status": "running", "retries": 0, "error": None}
            )
            current.update(status="running", failing=False)
        elif exited:
            state = states.setdefault(str(exited["name"]), {"retries": 0, "error": None})
            state["status"] = "caught" if state.pop("failing", False) else "succeeded"
        elif current is None or kind.startswith("Execution"):
            continue
        elif kind.endswith(("Failed", "TimedOut")):
            details: Mapping[str, Any] = next(
                (v for k, v in event.items() if k.endswith("EventDetails")), {}
            )
            current.update(status="failed", failing=True)
            current["error"] = {"error": details.get("error"), "cause": details.get("cause")}
        elif kind.endswith(("Scheduled", "Started")) and current.get("failing"):
            current.update(status="running", failing=False)
            current["retries"] += 1
    for state in states.values():
        state.pop("failing", None)
    return states


# -- one user ---------------------------------------------------------------------------

RECENT_DELIVERIES = 50


class UserDirectory(Protocol):
    def find_user(self, external_id: str) -> User | None: ...

    def list_devices(self, user_id: int) -> list[Device]: ...

    def load_preferences(self, user_ids: Sequence[int]) -> dict[int, Preferences]: ...

    def topics(self, user_id: int) -> list[str]: ...

    def recent_deliveries(self, user_id: int, limit: int) -> list[dict[str, Any]]: ...


class CapCounter(Protocol):
    def cap_usage(
        self, user_id: int, categories: Sequence[str], now: datetime
    ) -> dict[str, int]: ...


def user_view(
    external_id: str, directory: UserDirectory, caps: CapCounter, now: datetime
) -> dict[str, Any]:
    """A user as an operator checks them: profile, devices, preferences and quiet hours,
    the pushes counted against each capped category in the last 24 hours, and their
    latest deliveries with the localization and title each device got."""
    user = directory.find_user(external_id)
    if user is None:
        raise NotFound(f"user {external_id} not found")
    preferences = directory.load_preferences([user.id]).get(user.id, DEFAULT_PREFERENCES)
    capped = {
        name: preferences.cap_overrides.get(name, category.daily_cap)
        for name, category in CATEGORIES.items()
        if category.daily_cap is not None
    }
    used = caps.cap_usage(user.id, sorted(capped), now)
    deliveries = directory.recent_deliveries(user.id, RECENT_DELIVERIES)
    return {
        "user": user.to_dict(),
        "devices": [device.to_dict() for device in directory.list_devices(user.id)],
        "preferences": preferences_view(preferences),
        "topics": directory.topics(user.id),
        "cap_usage": {
            name: {"used": used.get(name, 0), "cap": cap} for name, cap in sorted(capped.items())
        },
        "recent_deliveries": deliveries,
    }
