"""What the API says about a send, from real PostgreSQL rows: counts so far while it
runs, deferred devices cancelled at once with the send, unknown users counted."""

from __future__ import annotations

import pytest

from pushflow.adapters.postgres import Repository
from pushflow.domain import registration
from pushflow.domain.models import DeliveryResult, NotificationStatus, Outcome
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users
from tests.integration.test_repository import REQUEST, delivery_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def repository(clean_runtime: LocalRuntime) -> Repository:
    return clean_runtime.services.repository


@pytest.fixture
def devices(clean_runtime: LocalRuntime) -> list[SeededDevice]:
    users = [
        SeedUser(f"view-{name}", "en", "UTC", {}, (("android", False),))
        for name in ("a", "b", "c", "d")
    ]
    return seed_users(clean_runtime, users)


def running_send_with_a_page_recorded(repository: Repository, devices: list[SeededDevice]) -> str:
    """A running send: two devices sent, two deferred to the end of their quiet hours."""
    notification, _ = repository.create_notification(REQUEST, "news", NotificationStatus.RUNNING)
    outcomes = [Outcome.SENT, Outcome.SENT, Outcome.DEFERRED, Outcome.DEFERRED]
    repository.record_deliveries(
        notification.id,
        0,
        [
            DeliveryResult(device.device_id, 0, outcome)
            for device, outcome in zip(devices, outcomes, strict=True)
        ],
    )
    return notification.id


def test_a_running_send_shows_its_counts_so_far(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    notification_id = running_send_with_a_page_recorded(repository, devices)
    # The stored counts are Finalize's, still empty; the view counts the rows.
    assert repository.get_notification(notification_id).counts == {}
    view = registration.notification_view(notification_id, repository)
    assert view.counts == {"sent": 2, "deferred": 2}
    assert view.status is NotificationStatus.RUNNING


def test_cancelling_makes_waiting_deferred_devices_cancelled_at_once(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    notification_id = running_send_with_a_page_recorded(repository, devices)

    cancelled = registration.cancel(notification_id, repository)

    assert cancelled.status is NotificationStatus.CANCELLED
    outcomes = sorted(row[1] for row in delivery_rows(repository, notification_id).values())
    assert outcomes == ["cancelled", "cancelled", "sent", "sent"]
    view = registration.notification_view(notification_id, repository)
    assert view.counts == {"sent": 2, "cancelled": 2}


def test_unknown_external_ids_of_a_users_send_are_counted(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    request = {
        **REQUEST,
        "audience": {
            "type": "users",
            "external_ids": ["view-a", "view-b", "nobody-1", "nobody-2", "nobody-2"],
        },
    }
    assert registration.unknown_external_ids(request, repository) == 2
    assert registration.unknown_external_ids(REQUEST, repository) is None
