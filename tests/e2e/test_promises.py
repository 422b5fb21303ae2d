"""Three behaviours users rely on that no test held (each was broken on purpose once,
and the suite stayed green): a cancelled send spends no daily cap; a 128-character
Idempotency-Key is taken; a deferred pass never defers again.

FilterRecipients runs as deployed (its handler, real Redis and PostgreSQL) on a
page of real recipients; the Idempotency-Key goes through the local gateway.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from pushflow.adapters.recipient_filter import cap_key
from pushflow.domain.models import NotificationStatus
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users
from pushflow_local.server import LocalApiServer
from tests.e2e.test_api import Client
from tests.e2e.test_delivery_rules import set_preferences, wall_clock

pytestmark = pytest.mark.e2e

ZONE = "Europe/Vienna"


def news_to(external_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "category": "news",
        "audience": {"type": "users", "external_ids": [external_id]},
        "content": {"title": "Morning", "body": "The news"},
        **extra,
    }


@pytest.fixture
def reader(clean_runtime: LocalRuntime) -> SeededDevice:
    name = f"promise-{uuid.uuid4().hex[:8]}"
    (device,) = seed_users(clean_runtime, [SeedUser(name, "de", ZONE, {}, (("android", False),))])
    return device


def create_send(runtime: LocalRuntime, request: dict[str, Any], *, cancel: bool = False) -> str:
    repository = runtime.services.repository
    notification, _ = repository.create_notification(
        request, request["category"], NotificationStatus.RUNNING
    )
    if cancel:
        assert repository.cancel_notification(notification.id) is not None
    return notification.id


def filter_page(
    runtime: LocalRuntime, notification_id: str, *, due: int | None = None
) -> dict[str, Any]:
    """FilterRecipients on the send's one page, as the state machine would call it."""
    repository = runtime.services.repository
    audience = repository.get_notification(notification_id).request["audience"]
    ((page, _),) = repository.plan_pages(audience, 500)
    if due is not None:
        page = dataclasses.replace(page, due=due)
    recipients = repository.resolve_page(audience, page, [], notification_id)
    assert recipients, "the page has a recipient to filter"
    event = {"notification_id": notification_id, "page": page.to_dict(), "recipients": recipients}
    result: dict[str, Any] = runtime.invoke("FilterRecipientsFunction", event)
    return result


def outcomes(result: dict[str, Any]) -> list[str | None]:
    """Each recipient's outcome; None for one kept to be published."""
    return [r.get("outcome") for r in [*result.get("recipients", []), *result.get("filtered", [])]]


def caps_spent(runtime: LocalRuntime, device: SeededDevice) -> int:
    user = runtime.services.repository.find_user(device.user_external_id)
    assert user is not None
    return int(runtime.services.store.client.zcard(cap_key(user.id, "news")))


def test_a_cancelled_send_spends_no_daily_cap(
    clean_runtime: LocalRuntime, reader: SeededDevice
) -> None:
    # GIVEN a send cancelled before its page is filtered
    cancelled = create_send(clean_runtime, news_to(reader.user_external_id), cancel=True)
    # THEN its recipient is cancelled and the user's news cap is untouched
    assert outcomes(filter_page(clean_runtime, cancelled)) == ["cancelled"]
    assert caps_spent(clean_runtime, reader) == 0
    # while a send that goes ahead does spend one (the key looked at is the right one)
    kept = create_send(clean_runtime, news_to(reader.user_external_id))
    assert outcomes(filter_page(clean_runtime, kept)) == [None]
    assert caps_spent(clean_runtime, reader) == 1


def test_a_deferred_pass_never_defers_again_when_quiet_hours_change_during_the_wait(
    clean_runtime: LocalRuntime, reader: SeededDevice
) -> None:
    # GIVEN a device deferred by quiet hours that end in an hour
    now = clean_runtime.clock.now()
    quiet_from = wall_clock(now - timedelta(hours=1), ZONE)
    set_preferences(
        clean_runtime,
        reader.user_external_id,
        quiet_hours=(quiet_from, wall_clock(now + timedelta(hours=1), ZONE)),
    )
    send = create_send(clean_runtime, news_to(reader.user_external_id, quiet_hours="defer"))
    first_pass = filter_page(clean_runtime, send)
    assert outcomes(first_pass) == ["deferred"]
    clean_runtime.invoke(
        "RecordResultsFunction",
        {"notification_id": send, "page": first_pass["page"], "results": first_pass["filtered"]},
    )
    # AND during the wait the user moved the end of their quiet hours later
    clean_runtime.services.repository.run(
        "DELETE FROM preferences WHERE user_id = (SELECT id FROM users WHERE external_id = :e)",
        e=reader.user_external_id,
    )
    set_preferences(
        clean_runtime,
        reader.user_external_id,
        quiet_hours=(quiet_from, wall_clock(now + timedelta(hours=5), ZONE)),
    )
    clean_runtime.services.recipient_filter.invalidate_preferences(_user_id(clean_runtime, reader))
    # WHEN the deferred pass (a page with `due`) filters the device
    (deferral,) = first_pass["filtered"]
    due = datetime.fromisoformat(deferral["deferred_until"].replace("Z", "+00:00"))
    deferred_pass = filter_page(clean_runtime, send, due=int(due.timestamp()))
    # THEN it is not deferred a second time: the pass ends the waiting
    assert outcomes(deferred_pass) != ["deferred"]
    assert outcomes(deferred_pass) == ["quiet_hours"]


def _user_id(runtime: LocalRuntime, device: SeededDevice) -> int:
    user = runtime.services.repository.find_user(device.user_external_id)
    assert user is not None
    return user.id


@pytest.mark.parametrize(("length", "taken"), [(128, True), (129, False)])
def test_an_idempotency_key_of_128_characters_is_taken_and_129_refused(
    api: LocalApiServer, clean_runtime: LocalRuntime, length: int, taken: bool
) -> None:
    client = Client(api)
    key = ("k" * length)[:length]
    request = news_to(f"promise-{uuid.uuid4().hex[:8]}")
    first = client.send(request, key)
    if not taken:
        assert first.status == 400 and first.body["field"] == "Idempotency-Key"
        return
    assert first.status == 202, first.raw
    # and it is the key the send is known by: the same request again is the same send
    again = client.send(request, key)
    assert again.status == 200
    assert again.body["notification_id"] == first.body["notification_id"]
    clean_runtime.wait(first.body["execution_arn"], timeout=30)
