"""Exactly once where it can be, a declared policy where it cannot (issue 15).

Each test reproduces one failure mode of the issue's table on one page, through
the real PublishBatch handler (or `sending.publish` where the test needs to hold
the invocation's clock), real PostgreSQL and Redis, and the SNS stand-in: what
each device got is read from what the stand-in delivered, not from the rows.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from pushflow.deadline import Deadline
from pushflow.domain import sending
from pushflow.domain.errors import OutOfTimeError, ThrottledError
from pushflow.domain.models import NotificationStatus, PageRef
from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users
from pushflow_local.sns import (
    ANSWER_ERROR,
    DELIVER_THEN_ERROR,
    DELIVER_THEN_RESET,
    Fault,
    SnsServer,
)

pytestmark = pytest.mark.integration

PUBLISH = "PublishBatchFunction"
CONTENT = {"title": "Hi", "body": "Something happened"}


def stand_in(runtime: LocalRuntime) -> SnsServer:
    assert runtime.sns is not None
    return runtime.sns


def delivered(endpoint_arn: str) -> dict[str, str]:
    from moto.sns.models import sns_backends

    return dict(sns_backends[ACCOUNT][REGION].platform_endpoints[endpoint_arn].messages)


def collapse_ids(runtime: LocalRuntime, device: SeededDevice) -> list[str | None]:
    """The collapse id each push a device got carried: APNs' from the Publish's
    message attribute, FCM's from its payload (collapse key and tag must agree)."""
    found: list[str | None] = []
    for message_id, message in delivered(device.endpoint_arn).items():
        parts = json.loads(message)
        if "GCM" in parts:
            android = json.loads(parts["GCM"])["fcmV1Message"]["message"].get("android", {})
            key = android.get("collapse_key")
            assert android.get("notification", {}).get("tag") == key
            found.append(key)
        else:
            found.append(stand_in(runtime).apns_collapse_ids.get(message_id))
    return found


@pytest.fixture
def devices(clean_runtime: LocalRuntime) -> list[SeededDevice]:
    prefix = f"once-{uuid.uuid4().hex[:10]}"
    users = [
        SeedUser(f"{prefix}-{i}", devices=[("ios", False), ("android", False)]) for i in range(3)
    ]
    return seed_users(clean_runtime, users)


def page_event(
    runtime: LocalRuntime, devices: list[SeededDevice], category: str
) -> tuple[str, dict[str, Any]]:
    """A running send of `category` and the event PublishBatch gets for its one page."""
    repository = runtime.services.repository
    request = {"category": category, "audience": {"type": "all"}, "content": CONTENT}
    notification, _ = repository.create_notification(request, category, NotificationStatus.RUNNING)
    page = PageRef(0, devices[0].device_id, devices[-1].device_id)
    resolved = sending.resolve(
        {"notification_id": notification.id, "page": page.to_dict()}, repository
    )
    assert len(resolved["recipients"]) == len(devices)
    return notification.id, {**resolved, "filtered": []}


def rows(runtime: LocalRuntime, notification_id: str) -> dict[int, str]:
    found = runtime.services.repository.run(
        "SELECT device_id, outcome FROM deliveries WHERE notification_id = CAST(:id AS uuid)",
        id=notification_id,
    )
    return {int(device): str(outcome) for device, outcome in found}


def invoke(runtime: LocalRuntime, event: dict[str, Any]) -> BaseException | dict[str, Any]:
    try:
        answer: dict[str, Any] = runtime.invoke(PUBLISH, event)
    except Exception as error:
        return error
    return answer


def pairs(recipients: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(int(r["device_id"]), int(r["user_id"])) for r in recipients]


def pushes_per_device(devices: list[SeededDevice]) -> list[int]:
    return [len(delivered(d.endpoint_arn)) for d in devices]


# -- 2. ambiguous answers: the category decides ----------------------------------------


@pytest.mark.parametrize("action", [DELIVER_THEN_ERROR, DELIVER_THEN_RESET])
def test_an_answer_that_hides_a_delivery_is_recorded_unknown_and_never_pushed_again(
    clean_runtime: LocalRuntime, devices: list[SeededDevice], action: str
) -> None:
    # GIVEN a `news` page (at most once), SNS delivering each push and then answering
    # a 5xx or resetting the connection
    notification_id, event = page_event(clean_runtime, devices, "news")
    fault = Fault(action, "InternalError")
    with stand_in(clean_runtime).faulty(fault):
        first = invoke(clean_runtime, event)
    assert fault.fired == len(devices)

    # WHEN the page runs again (a retry, a redrive)
    again = invoke(clean_runtime, event)

    # THEN each device got one push, its row says `unknown`, and the page was not failed
    assert pushes_per_device(devices) == [1] * len(devices)
    assert set(rows(clean_runtime, notification_id).values()) == {"unknown"}
    assert isinstance(first, dict) and first["outcomes"] == {"unknown": len(devices)}
    assert isinstance(again, dict) and again["outcomes"] == {"unknown": len(devices)}


@pytest.mark.parametrize("category", ["transactional", "security"])
def test_an_answer_that_hides_a_delivery_is_pushed_again_under_one_collapse_id(
    clean_runtime: LocalRuntime, devices: list[SeededDevice], category: str
) -> None:
    # GIVEN an at-least-once page, SNS delivering each push and then answering a 5xx
    notification_id, event = page_event(clean_runtime, devices, category)
    fault = Fault(DELIVER_THEN_ERROR, "InternalError")
    with stand_in(clean_runtime).faulty(fault):
        first = invoke(clean_runtime, event)

    # WHEN the ASL retries the page
    assert isinstance(first, ThrottledError)
    retried = invoke(clean_runtime, event)

    # THEN each device got the push twice, both carrying the send's collapse id (so
    # the device shows it once), and is recorded `sent`
    assert isinstance(retried, dict) and retried["outcomes"] == {"sent": len(devices)}
    assert pushes_per_device(devices) == [2] * len(devices)
    expected = sending.collapse_id_for(notification_id)
    assert all(collapse_ids(clean_runtime, d) == [expected, expected] for d in devices)
    assert set(rows(clean_runtime, notification_id).values()) == {"sent"}


# -- 1. durable truth: Redis may lose everything -----------------------------------------


def test_a_page_retried_after_redis_lost_everything_pushes_nobody_twice(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    # GIVEN a `news` page whose first attempt SNS throttled in part
    notification_id, event = page_event(clean_runtime, devices, "news")
    with stand_in(clean_runtime).faulty(Fault(ANSWER_ERROR, "Throttled", times=2)):
        first = invoke(clean_runtime, event)
    assert isinstance(first, ThrottledError)
    # ... and Redis losing all its data before the retry (a failover to an empty replica)
    clean_runtime.services.store.client.flushall()

    # WHEN the ASL retries the page
    retried = invoke(clean_runtime, event)

    # THEN every device got exactly one push and has a `sent` row
    assert isinstance(retried, dict) and retried["outcomes"] == {"sent": len(devices)}
    assert pushes_per_device(devices) == [1] * len(devices)
    assert set(rows(clean_runtime, notification_id).values()) == {"sent"}


@pytest.mark.parametrize(
    ("category", "pushes", "outcome"), [("news", 1, "unknown"), ("transactional", 2, "sent")]
)
def test_an_attempt_that_stopped_while_publishing_is_followed_by_the_policy(
    clean_runtime: LocalRuntime,
    devices: list[SeededDevice],
    category: str,
    pushes: int,
    outcome: str,
) -> None:
    # GIVEN an attempt that claimed the page durably and pushed to every device,
    # then died before writing a row (Lambda stopped it)
    notification_id, event = page_event(clean_runtime, devices, category)
    repository = clean_runtime.services.repository
    claims = repository.claim_devices(notification_id, 0, pairs(event["recipients"]))
    assert set(claims.values()) == {None}
    content = sending.compile_content(CONTENT)
    for raw in event["recipients"]:
        push = sending.push_for(content, sending.Recipient.from_dict(raw))
        clean_runtime.services.publisher.publish([push])
    assert pushes_per_device(devices) == [1] * len(devices)

    # WHEN the ASL retries the page
    retried = invoke(clean_runtime, event)

    # THEN at most once: nothing pushed again, recorded `unknown`; at least once:
    # pushed again and recorded `sent`
    assert isinstance(retried, dict) and retried["outcomes"] == {outcome: len(devices)}
    assert pushes_per_device(devices) == [pushes] * len(devices)
    assert set(rows(clean_runtime, notification_id).values()) == {outcome}


def test_a_page_that_fails_for_good_records_claimed_devices_unknown_and_the_rest_failed(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    # GIVEN a page of which an attempt claimed two devices and then died
    notification_id, event = page_event(clean_runtime, devices, "news")
    repository = clean_runtime.services.repository
    claimed = pairs(event["recipients"][:2])
    repository.claim_devices(notification_id, 0, claimed)

    # WHEN its retries are spent and RecordPageFailure records it
    sending.record_page_failure(
        {**event, "error": {"Error": "Sandbox.Timedout", "Cause": "timed out"}}, repository
    )

    # THEN the claimed devices (their push may have gone) are `unknown`, the others `failed`
    recorded = rows(clean_runtime, notification_id)
    claimed_ids = {device for device, _ in claimed}
    assert {recorded[d] for d in claimed_ids} == {"unknown"}
    assert {recorded[d] for d in set(recorded) - claimed_ids} == {"failed"}
    assert set(recorded) == {d.device_id for d in devices}


# -- 3. no silent loss: out of time ------------------------------------------------------


def test_publish_batch_stops_when_time_runs_short_and_the_retry_pushes_the_rest(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    # GIVEN a page whose invocation has plenty of time for its first 2 pushes, then
    # less than the stop margin
    notification_id, event = page_event(clean_runtime, devices, "news")
    repository = clean_runtime.services.repository
    asked: list[int] = []

    def remaining_millis() -> int:
        # Asked once for the margin, then before each push.
        asked.append(1)
        return 60_000 if len(asked) <= 3 else 5_000

    publisher = clean_runtime.services.publisher

    # WHEN the page is published
    with pytest.raises(OutOfTimeError):
        sending.publish(event, repository, repository, publisher, Deadline(remaining_millis))

    # THEN the 2 pushes that left are recorded, the others were neither pushed nor recorded
    first = rows(clean_runtime, notification_id)
    assert sorted(pushes_per_device(devices)) == [0] * (len(devices) - 2) + [1, 1]
    assert set(first.values()) == {"sent"} and len(first) == 2

    # WHEN the ASL retries the page (with time enough)
    retried = invoke(clean_runtime, event)

    # THEN every device got exactly one push and has a `sent` row
    assert isinstance(retried, dict) and retried["outcomes"] == {"sent": len(devices)}
    assert pushes_per_device(devices) == [1] * len(devices)
    assert set(rows(clean_runtime, notification_id).values()) == {"sent"}
