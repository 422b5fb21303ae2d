"""What flows between the states of a send.

Every event a task receives and every result it returns is one of these
shapes, so the ASL, the handlers and the sample events in `events/` agree on
one vocabulary. They are plain dataclasses (NamedTuples for the two built per
device) with explicit (de)serialisation: the payloads are small and hot, and a
parser library would cost more than it checks here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple


class Outcome(StrEnum):
    """The one final outcome a device gets for a send (the `deliveries.outcome` column)."""

    SENT = "sent"
    OPTED_OUT = "opted_out"
    QUIET_HOURS = "quiet_hours"
    DEFERRED = "deferred"
    CAPPED = "capped"
    DUPLICATE = "duplicate"
    ENDPOINT_DISABLED = "endpoint_disabled"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The device (or its user) was deleted after the send planned it.
    REMOVED = "removed"


# Outcome(value) as a dict lookup: RecordResults parses one per row.
_OUTCOMES: dict[str, Outcome] = {outcome.value: outcome for outcome in Outcome}
# A recipient without attributes: one shared, read-only empty mapping.
NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})


class NotificationStatus(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {
        NotificationStatus.COMPLETED,
        NotificationStatus.COMPLETED_WITH_FAILURES,
        NotificationStatus.FAILED,
        NotificationStatus.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class PageRef:
    """One page of the audience: an inclusive range of device ids (keyset pagination).

    A page of a deferred pass also carries `due` (epoch seconds): it holds
    the devices deferred by quiet hours until then, not the whole audience.
    """

    number: int
    first_device_id: int
    last_device_id: int
    due: int | None = None

    def to_dict(self) -> dict[str, int]:
        raw = {
            "number": self.number,
            "first_device_id": self.first_device_id,
            "last_device_id": self.last_device_id,
        }
        if self.due is not None:
            raw["due"] = self.due
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PageRef:
        due = raw.get("due")
        return cls(
            int(raw["number"]),
            int(raw["first_device_id"]),
            int(raw["last_device_id"]),
            int(due) if due is not None else None,
        )

    def key(self) -> str:
        """The page as the last part of an S3 key: `00000042_1001-1500` (`@<due>` if deferred)."""
        key = f"{self.number:08d}_{self.first_device_id}-{self.last_device_id}"
        return key if self.due is None else f"{key}@{self.due}"

    @classmethod
    def from_key(cls, key: str) -> PageRef:
        name = key.rsplit("/", 1)[-1]
        try:
            name, _, due = name.partition("@")
            number, bounds = name.split("_", 1)
            first, last = bounds.split("-", 1)
            return cls(int(number), int(first), int(last), int(due) if due else None)
        except ValueError:
            raise ValueError(f"not a page key: {key!r}") from None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> PageRef:
        """The page of a task's event: resolved already, or still the plan's S3 key."""
        if "page" in event:
            return cls.from_dict(event["page"])
        return cls.from_key(str(event["page_key"]))


class Recipient(NamedTuple):
    """One device to push to, with what the send needs to know about its user.

    Recipients and results are built once per device on every page (a NamedTuple is
    built in a third of a frozen dataclass's time), and are as immutable.
    """

    device_id: int
    user_id: int
    platform: str
    sandbox: bool
    endpoint_arn: str
    locale: str
    time_zone: str
    attributes: Mapping[str, Any] = NO_ATTRIBUTES

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "device_id": self.device_id,
            "user_id": self.user_id,
            "platform": self.platform,
            "sandbox": self.sandbox,
            "endpoint_arn": self.endpoint_arn,
            "locale": self.locale,
            "time_zone": self.time_zone,
        }
        if self.attributes:
            raw["attributes"] = dict(self.attributes)
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Recipient:
        return cls(
            int(raw["device_id"]),
            int(raw["user_id"]),
            str(raw["platform"]),
            bool(raw["sandbox"]),
            str(raw["endpoint_arn"]),
            str(raw["locale"]),
            str(raw["time_zone"]),
            raw.get("attributes") or NO_ATTRIBUTES,
        )


class DeliveryResult(NamedTuple):
    """What happened to one recipient; becomes one row in `deliveries`."""

    device_id: int
    user_id: int
    outcome: Outcome
    sns_message_id: str | None = None
    error: str | None = None
    # For Outcome.DEFERRED: when quiet hours end (ISO 8601, UTC).
    deferred_until: str | None = None
    # For a push: the localization key that supplied its text (`default`: none did)
    # and the title as shown.
    content_locale: str | None = None
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "device_id": self.device_id,
            "user_id": self.user_id,
            "outcome": self.outcome.value,
        }
        if self.sns_message_id is not None:
            raw["sns_message_id"] = self.sns_message_id
        if self.error is not None:
            raw["error"] = self.error
        if self.deferred_until is not None:
            raw["deferred_until"] = self.deferred_until
        if self.content_locale is not None:
            raw["content_locale"] = self.content_locale
        if self.title is not None:
            raw["title"] = self.title
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DeliveryResult:
        value = raw["outcome"]
        try:
            outcome = _OUTCOMES[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid Outcome") from None
        return cls(
            int(raw["device_id"]),
            int(raw["user_id"]),
            outcome,
            raw.get("sns_message_id"),
            raw.get("error"),
            raw.get("deferred_until"),
            raw.get("content_locale"),
            raw.get("title"),
        )


@dataclass(frozen=True, slots=True)
class Notification:
    """A send as stored: the validated request and where it stands."""

    id: str
    category: str
    request: Mapping[str, Any]
    status: NotificationStatus
    counts: Mapping[str, int] = field(default_factory=dict)
    recipient_count: int | None = None
    page_count: int | None = None
    execution_arn: str | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    schedule_id: str | None = None
    send_at: str | None = None

    @property
    def audience(self) -> Mapping[str, Any]:
        audience: Mapping[str, Any] = self.request["audience"]
        return audience

    @property
    def content(self) -> Mapping[str, Any]:
        content: Mapping[str, Any] = self.request["content"]
        return content

    def to_dict(self) -> dict[str, Any]:
        return {
            "notification_id": self.id,
            "category": self.category,
            "status": self.status.value,
            "counts": dict(self.counts),
            "recipient_count": self.recipient_count,
            "page_count": self.page_count,
            "execution_arn": self.execution_arn,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "schedule_id": self.schedule_id,
            "send_at": self.send_at,
        }


class ScheduleKind(StrEnum):
    ONCE = "once"
    RECURRING = "recurring"
    LOCAL_TIME = "local_time"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A timed send: once at a time, on a cron, or at a local time in each recipient's zone."""

    id: str
    kind: ScheduleKind
    request: Mapping[str, Any]
    status: str
    send_at: str | None = None
    cron: str | None = None
    time_zone: str | None = None
    start_at: str | None = None
    end_at: str | None = None
    local_time: str | None = None
    local_date: str | None = None
    if_passed: str | None = None
    created_at: str | None = None
    cancelled_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "schedule_id": self.id,
            "kind": self.kind.value,
            "status": self.status,
            "send": dict(self.request),
            "created_at": self.created_at,
            "cancelled_at": self.cancelled_at,
        }
        if self.kind is ScheduleKind.ONCE:
            raw["send_at"] = self.send_at
        elif self.kind is ScheduleKind.RECURRING:
            raw["recurrence"] = {
                key: value
                for key, value in (
                    ("cron", self.cron),
                    ("time_zone", self.time_zone),
                    ("start_at", self.start_at),
                    ("end_at", self.end_at),
                )
                if value is not None
            }
        else:
            raw["local_time"] = {
                key: value
                for key, value in (
                    ("at", self.local_time),
                    ("date", self.local_date),
                    ("if_passed", self.if_passed),
                )
                if value is not None
            }
        return raw


@dataclass(frozen=True, slots=True)
class User:
    id: int
    external_id: str
    locale: str
    time_zone: str
    attributes: Mapping[str, Any]
    created_at: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "external_id": self.external_id,
            "locale": self.locale,
            "time_zone": self.time_zone,
            "attributes": dict(self.attributes),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Device:
    id: int
    user_id: int
    platform: str
    token: str
    endpoint_arn: str
    sandbox: bool
    enabled: bool
    created_at: str
    last_seen_at: str

    def to_dict(self) -> dict[str, Any]:
        """What the API shows of a device: never its token or endpoint."""
        return {
            "device_id": str(self.id),
            "platform": self.platform,
            "sandbox": self.sandbox,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "last_seen_at": self.last_seen_at,
        }


def page_event(notification_id: str, page: PageRef, **rest: Any) -> dict[str, Any]:
    """The state every task of one page receives and returns, plus its own fields."""
    return {"notification_id": notification_id, "page": page.to_dict(), **rest}
