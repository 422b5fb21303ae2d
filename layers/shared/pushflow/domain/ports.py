"""What the domain needs from the outside world, as protocols.

The adapters in `pushflow.adapters` implement these; tests may pass others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pushflow.domain.models import (
    DeliveryResult,
    Notification,
    NotificationStatus,
    PageRef,
    Recipient,
)


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
    def max_attribute_bytes(self, audience_spec: Mapping[str, Any], keys: Sequence[str]) -> int: ...

    def plan_pages(
        self, audience_spec: Mapping[str, Any], page_size: int
    ) -> list[tuple[PageRef, int]]: ...

    def resolve_page(
        self, audience_spec: Mapping[str, Any], page: PageRef, attribute_keys: Sequence[str]
    ) -> list[Recipient]: ...

    def record_deliveries(
        self, notification_id: str, page: int, results: Iterable[DeliveryResult]
    ) -> int: ...

    def record_page_failure(
        self, notification_id: str, audience_spec: Mapping[str, Any], page: PageRef, error: str
    ) -> int: ...


class PagePlans(Protocol):
    def write(self, notification_id: str, run: str, pages: Sequence[PageRef]) -> dict[str, str]: ...


class WorkflowStarter(Protocol):
    def start(self, execution_name: str, notification_id: str) -> str: ...


class PublishMarkers(Protocol):
    def claim(
        self, notification_id: str, page: int, device_ids: Sequence[int]
    ) -> dict[int, str | None]: ...

    def settle(
        self,
        notification_id: str,
        page: int,
        sent: Mapping[int, str],
        released: Sequence[int] = (),
    ) -> None: ...
