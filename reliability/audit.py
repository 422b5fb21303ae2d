"""Counting what a send left behind: delivery rows, what SNS holds, the notification.

A send is judged only by what a user of Pushflow could check afterwards:

- every targeted device has exactly one delivery row, with a final outcome
  (a device without one is *lost*);
- no endpoint holds the send's message more than once (each extra copy is
  *duplicated*);
- a `sent` row names the message SNS holds for that endpoint, and a device
  whose row says it was not pushed got nothing (otherwise *misrecorded*); an
  `unknown` row is the declared at-most-once doubt (SNS's answer, or an attempt
  that stopped while publishing, cannot say whether the push went) and is
  counted as *unknown*, and as *unknown, undelivered* when SNS holds no copy
  (the policy's price when a 5xx hid nothing; a scenario that injects no
  ambiguous answer requires none, so a push that never left cannot hide there);
- duplicates by policy: in at-most-once categories every extra copy is
  *duplicated*; in at-least-once ones (transactional, security) an extra copy
  is allowed only when every copy carries the send's collapse id (the device
  shows it once), else it is *duplicated*;
- the notification's counts equal its rows, per outcome.

Messages are told apart by a tag in their body, unique per send.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pushflow.domain.categories import CATEGORIES
from pushflow.domain.models import Notification
from pushflow.domain.sending import collapse_id_for
from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime

FINAL_OUTCOMES = frozenset(
    {
        "sent",
        "opted_out",
        "quiet_hours",
        "capped",
        "duplicate",
        "endpoint_disabled",
        "failed",
        "cancelled",
        "unknown",
    }
)
# Outcomes after which SNS must hold nothing for the device.
NOT_PUSHED = FINAL_OUTCOMES - {"sent", "failed", "unknown"}


@dataclass(frozen=True)
class TargetDevice:
    device_id: int
    user_id: int
    endpoint_arn: str


@dataclass
class SendAudit:
    notification_id: str
    tag: str
    status: str
    execution_status: str
    expected: int = 0
    recorded: int = 0
    lost: int = 0
    duplicated: int = 0
    misrecorded: int = 0
    unknown: int = 0
    # `unknown` rows whose device SNS never got a copy for.
    unknown_undelivered: int = 0
    # Extra copies that carried the send's collapse id (at-least-once categories).
    collapsed: int = 0
    counts_match: bool = True
    outcomes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # device id -> (outcome, sns message id, error)
    rows: dict[int, tuple[str, str | None, str | None]] = field(default_factory=dict)
    # device id -> how many messages of this send its endpoint holds
    messages: dict[int, int] = field(default_factory=dict)

    def note(self, problem: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(problem)


def targeted_devices(runtime: LocalRuntime, topic: str) -> dict[int, TargetDevice]:
    """The devices a topic send reaches, as Prepare plans it: enabled devices of subscribers."""
    rows = runtime.services.repository.run(
        "SELECT d.id, d.user_id, d.endpoint_arn FROM devices d"
        " JOIN topic_subscriptions t ON t.user_id = d.user_id"
        " WHERE t.topic = :topic AND d.enabled ORDER BY d.id",
        topic=topic,
    )
    return {row[0]: TargetDevice(row[0], row[1], row[2]) for row in rows}


def endpoint_messages(arns: Iterable[str]) -> dict[str, dict[str, str]]:
    """What SNS (moto) holds per endpoint: message id -> message."""
    from moto.sns.models import sns_backends

    endpoints = sns_backends[ACCOUNT][REGION].platform_endpoints
    return {arn: dict(endpoints[arn].messages) for arn in arns if arn in endpoints}


def delivery_rows(
    runtime: LocalRuntime, notification_id: str
) -> tuple[dict[int, tuple[str, str | None, str | None]], int]:
    """device id -> (outcome, message id, error), and the raw row count (doubles show)."""
    rows = runtime.services.repository.run(
        "SELECT device_id, outcome, sns_message_id, error FROM deliveries"
        " WHERE notification_id = CAST(:id AS uuid)",
        id=notification_id,
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}, len(rows)


def audit_send(
    runtime: LocalRuntime,
    notification: Notification,
    execution_status: str,
    targeted: Mapping[int, TargetDevice],
    tag: str,
    planned_by_prepare: bool = False,
    apns_collapse_ids: Mapping[str, str] | None = None,
) -> SendAudit:
    """Count one finished send. `targeted`: the devices it must reach, or with
    `planned_by_prepare`, the devices it may reach: devices disabled by other sends
    while it started are left out of its plan, so then the plan's count
    (`recipient_count`) is what must be recorded, and `targeted` bounds the rows."""
    audit = SendAudit(notification.id, tag, notification.status.value, execution_status)
    audit.expected = int(notification.recipient_count or 0) if planned_by_prepare else len(targeted)
    rows, raw_count = delivery_rows(runtime, notification.id)
    audit.rows = rows
    if raw_count != len(rows):
        audit.note(f"{raw_count - len(rows)} device(s) have more than one row")
        audit.misrecorded += raw_count - len(rows)

    arns = {device.endpoint_arn for device in targeted.values()}
    # All copies of this send's message per endpoint, as the runtime reports them.
    tagged = {
        arn: sum(tag in message for message in messages)
        for arn, messages in runtime.sns_messages().items()
        if arn in arns
    }
    by_id = endpoint_messages(arns)

    at_least_once = CATEGORIES[notification.category].at_least_once
    collapse_id = collapse_id_for(notification.id)
    for device in targeted.values():
        copies = tagged.get(device.endpoint_arn, 0)
        audit.messages[device.device_id] = copies
        if copies > 1:
            at_endpoint = by_id.get(device.endpoint_arn, {})
            carried = [
                _collapse_id(message_id, message, apns_collapse_ids or {})
                for message_id, message in at_endpoint.items()
                if tag in message
            ]
            if at_least_once and all(c == collapse_id for c in carried):
                audit.collapsed += copies - 1
            else:
                audit.duplicated += copies - 1
                audit.note(f"device {device.device_id}: {copies} copies at its endpoint")
        row = rows.get(device.device_id)
        if row is None and planned_by_prepare and not copies:
            continue  # not in this send's plan (disabled before its Prepare ran)
        if row is None or row[0] not in FINAL_OUTCOMES:
            audit.lost += 1
            audit.note(f"device {device.device_id}: no final row ({row[0] if row else 'none'})")
            continue
        audit.recorded += 1
        outcome, message_id, _ = row
        if outcome == "unknown":
            audit.unknown += 1
            if not copies:
                # The policy's price (a 5xx that hid nothing), or a push that never
                # left and was recorded as if it might have: scenarios without an
                # ambiguous answer require none.
                audit.unknown_undelivered += 1
        elif outcome == "sent":
            held = by_id.get(device.endpoint_arn, {}).get(message_id or "")
            if held is None or tag not in held:
                audit.misrecorded += 1
                audit.note(f"device {device.device_id}: sent as {message_id}, SNS has no such")
        elif copies:
            audit.misrecorded += 1
            audit.note(f"device {device.device_id}: recorded {outcome} but SNS holds the push")
    strangers = set(rows) - set(targeted)
    if strangers:
        audit.misrecorded += len(strangers)
        audit.note(f"{len(strangers)} row(s) for devices the send did not target")

    if planned_by_prepare and audit.recorded + audit.lost < audit.expected:
        # Planned, yet no row and never pushed: dropped between Prepare and the page.
        missing = audit.expected - audit.recorded - audit.lost
        audit.lost += missing
        audit.note(f"{missing} planned device(s) have no row")
    audit.outcomes = dict(Counter(outcome for outcome, _, _ in rows.values()))
    audit.counts_match = dict(notification.counts) == audit.outcomes and (
        notification.recipient_count in (None, audit.expected)
    )
    if not audit.counts_match:
        audit.note(
            f"notification counts {notification.counts} (recipients"
            f" {notification.recipient_count}) vs rows {audit.outcomes} ({len(targeted)})"
        )
    return audit


def _collapse_id(message_id: str, message: str, apns_collapse_ids: Mapping[str, str]) -> str | None:
    """The collapse id a delivered push carried: FCM's in its payload (collapse key,
    and the notification tag agreeing), APNs' as the Publish's message attribute."""
    parts = json.loads(message)
    if "GCM" in parts:
        android = json.loads(parts["GCM"])["fcmV1Message"]["message"].get("android", {})
        key = android.get("collapse_key")
        return key if android.get("notification", {}).get("tag") == key else None
    return apns_collapse_ids.get(message_id)


def user_deliveries(
    audits: Iterable[tuple[SendAudit, Mapping[int, TargetDevice]]],
) -> dict[int, set[str]]:
    """user id -> the sends (tags) that reached at least one of the user's devices."""
    reached: dict[int, set[str]] = {}
    for audit, targeted in audits:
        for device_id, copies in audit.messages.items():
            if copies:
                reached.setdefault(targeted[device_id].user_id, set()).add(audit.tag)
    return reached


def describe(audit: SendAudit) -> dict[str, Any]:
    return {
        "notification_id": audit.notification_id,
        "status": audit.status,
        "execution_status": audit.execution_status,
        "expected": audit.expected,
        "recorded": audit.recorded,
        "lost": audit.lost,
        "duplicated": audit.duplicated,
        "misrecorded": audit.misrecorded,
        "unknown": audit.unknown,
        "collapsed_duplicates": audit.collapsed,
        "unknown_undelivered": audit.unknown_undelivered,
        "counts_match": audit.counts_match,
        "outcomes": audit.outcomes,
        "problems": audit.problems,
    }
