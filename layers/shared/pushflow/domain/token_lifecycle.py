"""The life of a device token after registration, as SNS reports it.

SNS tells a platform application's event topics when an endpoint is updated
(SNS disables it when APNs or FCM reject its token), deleted, or when a
delivery failed for good. Pushflow keeps PostgreSQL in step:

- an endpoint disabled, or a delivery failure that blames the token, disables
  the device (`enabled = false`, with the reason and the time SNS saw it);
- a deleted endpoint removes the device;
- anything else (an endpoint re-enabled, a payload APNs/FCM refused, a
  throttle) changes nothing: only a registration re-enables a device, with a
  token the app has just confirmed.

An event older than the device's last registration is stale (the app has
registered the token again since) and changes nothing either. A daily sweep
removes devices disabled for longer than the retention period, and their
SNS endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pushflow.domain.errors import InvalidRequest

# Delivery failures that mean the token is dead (SNS's FailureType values);
# the others (InvalidNotification, throttling, ...) are not the device's fault.
DEAD_TOKEN_FAILURES = frozenset(
    {
        "EndpointDisabled",
        "InvalidPlatformToken",
        "InvalidToken",
        "TokenExpired",
        "Unregistered",
    }
)


class TokenEventType(StrEnum):
    ENDPOINT_UPDATED = "EndpointUpdated"
    ENDPOINT_DELETED = "EndpointDeleted"
    DELIVERY_FAILURE = "DeliveryFailure"


class Action(StrEnum):
    DISABLE = "disable"
    REMOVE = "remove"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class TokenEvent:
    type: TokenEventType
    endpoint_arn: str
    occurred_at: datetime
    enabled: bool | None = None  # EndpointUpdated: the endpoint's Enabled, if it changed
    failure_type: str | None = None  # DeliveryFailure: SNS's FailureType


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str


def decide(event: TokenEvent) -> Decision:
    if event.type is TokenEventType.ENDPOINT_DELETED:
        return Decision(Action.REMOVE, "endpoint_deleted")
    if event.type is TokenEventType.ENDPOINT_UPDATED:
        # SNS disables an endpoint when APNs/FCM reject its token; the event says
        # Enabled false, or names the token's failure.
        if event.enabled is False or event.failure_type in DEAD_TOKEN_FAILURES:
            return Decision(Action.DISABLE, "endpoint_disabled")
        return Decision(Action.IGNORE, "endpoint_updated")
    if event.failure_type in DEAD_TOKEN_FAILURES:
        return Decision(Action.DISABLE, f"delivery_failure:{event.failure_type}")
    return Decision(Action.IGNORE, f"delivery_failure:{event.failure_type or 'unknown'}")


# -- reading SNS's messages ----------------------------------------------------------


def _timestamp(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"not a timestamp: {value!r}", "Time") from None
    if moment.tzinfo is None:
        raise InvalidRequest(f"timestamp without a time zone: {value!r}", "Time")
    return moment


def _enabled(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def parse_message(message: Mapping[str, Any]) -> TokenEvent:
    """One endpoint event, the JSON SNS publishes to the event topic."""
    try:
        event_type = TokenEventType(str(message.get("EventType")))
    except ValueError:
        raise InvalidRequest(f"not an endpoint event: {message.get('EventType')!r}") from None
    endpoint_arn = message.get("EndpointArn")
    if not isinstance(endpoint_arn, str) or ":endpoint/" not in endpoint_arn:
        raise InvalidRequest("the event names no platform endpoint", "EndpointArn")
    return TokenEvent(
        type=event_type,
        endpoint_arn=endpoint_arn,
        occurred_at=_timestamp(message.get("Time")),
        enabled=_enabled(message.get("Enabled")),
        failure_type=message.get("FailureType"),
    )


def parse_sns_event(event: Mapping[str, Any]) -> tuple[list[TokenEvent], list[str]]:
    """The endpoint events of a Lambda SNS event, and why any record was unreadable.

    An unreadable record can never succeed, so it is reported, not retried.
    """
    events: list[TokenEvent] = []
    unreadable: list[str] = []
    for record in event.get("Records") or []:
        sns = record.get("Sns") or {}
        try:
            message = json.loads(sns.get("Message") or "")
            if not isinstance(message, dict):
                raise InvalidRequest("the message is not a JSON object")
            events.append(parse_message(message))
        except (ValueError, InvalidRequest) as error:
            unreadable.append(f"{sns.get('MessageId', '?')}: {error}")
    return events, unreadable


# -- applying them -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Disable:
    endpoint_arn: str
    reason: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Remove:
    endpoint_arn: str
    occurred_at: datetime


class DeviceLifecycle(Protocol):
    """Where devices live (PostgreSQL): what the token lifecycle changes."""

    def disable_devices(self, changes: Sequence[Disable]) -> int: ...
    def remove_devices(self, changes: Sequence[Remove]) -> int: ...

    def remove_disabled_before(self, cutoff: datetime, limit: int) -> list[str]:
        """Delete up to `limit` devices disabled before `cutoff`; their endpoint ARNs."""
        ...


class EndpointRemover(Protocol):
    def delete(self, arn: str) -> None: ...


@dataclass(slots=True)
class LifecycleSummary:
    disabled: int = 0
    removed: int = 0
    ignored: int = 0
    unreadable: int = 0
    stale: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "disabled": self.disabled,
            "removed": self.removed,
            "ignored": self.ignored,
            "unreadable": self.unreadable,
            "stale": self.stale,
        }


def apply_events(events: Iterable[TokenEvent], devices: DeviceLifecycle) -> LifecycleSummary:
    """Disable and remove devices; for each endpoint only its latest event counts."""
    latest: dict[str, tuple[TokenEvent, Decision]] = {}
    summary = LifecycleSummary()
    for event in events:
        decision = decide(event)
        if decision.action is Action.IGNORE:
            summary.ignored += 1
            continue
        previous = latest.get(event.endpoint_arn)
        # A removal wins over a disable of the same endpoint, whatever the order.
        if (
            previous is None
            or decision.action is Action.REMOVE
            or (
                previous[1].action is Action.DISABLE and event.occurred_at > previous[0].occurred_at
            )
        ):
            latest[event.endpoint_arn] = (event, decision)
    removals = [
        Remove(arn, event.occurred_at)
        for arn, (event, decision) in latest.items()
        if decision.action is Action.REMOVE
    ]
    disables = [
        Disable(arn, decision.reason, event.occurred_at)
        for arn, (event, decision) in latest.items()
        if decision.action is Action.DISABLE
    ]
    if removals:
        summary.removed = devices.remove_devices(removals)
    if disables:
        summary.disabled = devices.disable_devices(disables)
    # Events whose device was registered again since (or never known here).
    summary.stale = len(removals) + len(disables) - summary.removed - summary.disabled
    return summary


# -- the sweep -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepPolicy:
    retention: timedelta
    batch_size: int = 500

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SweepPolicy:
        from pushflow.config import ConfigurationError

        raw = env.get("DISABLED_DEVICE_RETENTION_DAYS", "").strip() or "30"
        try:
            days = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"DISABLED_DEVICE_RETENTION_DAYS must be a whole number, got {raw!r}"
            ) from None
        if not 1 <= days <= 3650:
            raise ConfigurationError(
                f"DISABLED_DEVICE_RETENTION_DAYS must be between 1 and 3650, got {days}"
            )
        return cls(retention=timedelta(days=days))


@dataclass(slots=True)
class SweepSummary:
    removed: int = 0
    endpoints_deleted: int = 0
    endpoint_errors: list[str] = field(default_factory=list)
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "endpoints_deleted": self.endpoints_deleted,
            "endpoint_errors": len(self.endpoint_errors),
            "finished": self.finished,
        }


def sweep(
    devices: DeviceLifecycle,
    endpoints: EndpointRemover,
    now: datetime,
    policy: SweepPolicy,
    time_left: Callable[[], float],
    min_seconds: float = 30.0,
) -> SweepSummary:
    """Remove devices disabled before now - retention, batch by batch, while time is left.

    Rows go first, then their endpoints: a token registered again meanwhile is
    enabled, so its row is not taken. What is left over is taken by the next run.
    """
    cutoff = now - policy.retention
    summary = SweepSummary()
    while time_left() > min_seconds:
        endpoint_arns = devices.remove_disabled_before(cutoff, policy.batch_size)
        summary.removed += len(endpoint_arns)
        for arn in endpoint_arns:
            try:
                endpoints.delete(arn)
                summary.endpoints_deleted += 1
            except Exception as error:  # an orphaned, disabled endpoint is harmless
                summary.endpoint_errors.append(f"{arn}: {type(error).__name__}")
        if len(endpoint_arns) < policy.batch_size:
            summary.finished = True
            break
    return summary
