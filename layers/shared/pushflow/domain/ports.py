"""What the domain needs from the outside world, as protocols.

The adapters in `pushflow.adapters` implement these; tests may pass others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pushflow.domain.categories import Category
from pushflow.domain.models import (
    DeliveryResult,
    Notification,
    NotificationStatus,
    PageRef,
    Recipient,
)


@dataclass(frozen=True, slots=True)
class AttributeStats:
    """What the attributes a content's placeholders use weigh across an audience."""

    max_bytes: int = 0
    # placeholder -> recipients without that attribute
    missing: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FilterDecision:
    """A page's recipients decided: each is eligible, filtered (with its outcome) or deferred."""

    eligible: list[Recipient]  # in page order
    filtered: list[DeliveryResult]
    deferred: list[tuple[Recipient, datetime]]
    # Where each eligible recipient is in the page given (same order): the caller
    # passes on what it received for them without rebuilding it.
    eligible_positions: list[int]

    def __post_init__(self) -> None:
        if len(self.eligible_positions) != len(self.eligible):
            raise ValueError("one position per eligible recipient")


@dataclass(frozen=True, slots=True)
class PriorClaim:
    """What an earlier attempt of a page left for a device it claimed: its row, or
    None when it stopped between the claim and the row (the push may have gone)."""

    result: DeliveryResult | None


class NotificationRepository(Protocol):
    def create_notification(
        self,
        request: Mapping[str, Any],
        category: str,
        status: NotificationStatus,
        idempotency_key: str | None = None,
        notification_id: str | None = None,
    ) -> tuple[Notification, bool]: ...

    def get_notification(self, notification_id: str) -> Notification: ...
    def set_execution(self, notification_id: str, execution_arn: str) -> None: ...

    def mark_running(
        self, notification_id: str, execution_arn: str, recipient_count: int, page_count: int
    ) -> None: ...

    def finish(
        self, notification_id: str, status: NotificationStatus, error: str | None = None
    ) -> Notification: ...

    def outcome_counts(self, notification_id: str) -> dict[str, int]: ...
    def complete_schedule(self, schedule_id: str) -> None: ...
    def attribute_stats(
        self, audience_spec: Mapping[str, Any], keys: Sequence[str]
    ) -> AttributeStats: ...

    def plan_pages(
        self, audience_spec: Mapping[str, Any], page_size: int
    ) -> list[tuple[PageRef, int]]: ...

    def get_send(self, notification_id: str) -> Notification:
        """The notification's unchanging part (request, content, audience, category,
        created_at), possibly cached: never its status."""
        ...

    def resolve_page(
        self,
        audience_spec: Mapping[str, Any],
        page: PageRef,
        attribute_keys: Sequence[str],
        notification_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The page's recipients as the state machine carries them (Recipient.to_dict)."""
        ...

    def close_orphaned_deferrals(self, notification_id: str) -> int: ...
    def earliest_deferral(self, notification_id: str) -> datetime | None: ...
    def fail_deferred(self, notification_id: str, error: str) -> int: ...
    def cancel_deferred(self, notification_id: str) -> int: ...

    def plan_deferred_pages(
        self, notification_id: str, due_by: datetime, page_size: int
    ) -> tuple[list[tuple[PageRef, int]], datetime | None]: ...

    def record_deliveries(
        self,
        notification_id: str,
        page: int,
        results: Iterable[DeliveryResult],
        released: Sequence[int] = (),
    ) -> int: ...

    def record_page_failure(
        self, notification_id: str, audience_spec: Mapping[str, Any], page: PageRef, error: str
    ) -> int: ...

    # Every send ends (domain/send_ends.py): devices removed after the plan get rows.
    def start_plan(self, notification_id: str) -> None: ...

    def removed_since_plan(
        self, notification_id: str, audience_spec: Mapping[str, Any], page: PageRef | None = None
    ) -> list[DeliveryResult]: ...

    def record_removed_in_page(
        self, notification_id: str, audience_spec: Mapping[str, Any], page: PageRef
    ) -> int: ...


class RecipientRules(Protocol):
    def apply(
        self,
        notification_id: str,
        page: str,
        category: Category,
        quiet_hours_mode: Literal["suppress", "defer"],
        recipients: Sequence[Recipient],
        now: datetime,
    ) -> FilterDecision: ...


class PagePlans(Protocol):
    def write(self, notification_id: str, run: str, pages: Sequence[PageRef]) -> dict[str, str]: ...


class WorkflowStarter(Protocol):
    def start(self, execution_name: str, notification_id: str) -> str: ...


class PublishClaims(Protocol):
    """The durable record of which devices a send pushed to (PostgreSQL)."""

    def claim_devices(
        self,
        notification_id: str,
        page: int,
        recipients: Sequence[tuple[int, int]],
        claimed_at: datetime | None = None,
    ) -> dict[int, PriorClaim | None]:
        """Claim (device, user) pairs: None where claimed now, else what was there."""
        ...

    def record_deliveries(
        self,
        notification_id: str,
        page: int,
        results: Iterable[DeliveryResult],
        released: Sequence[int] = (),
    ) -> int: ...


class PublishMarkers(Protocol):
    """Redis, where an attempt keeps its results when PostgreSQL refused its rows."""

    def settle(
        self,
        notification_id: str,
        page: str,
        sent: Mapping[int, str],
        released: Sequence[int] = (),
    ) -> None: ...

    def markers(self, notification_id: str, page: str) -> dict[int, str]: ...
