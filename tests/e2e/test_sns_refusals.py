"""SNS refusing the whole send, through the real state machine.

An AuthorizationError (or any answer that says the send itself cannot work)
is no device's failure: PublishBatch raises PublishRejectedError, the ASL
retries it twice and then fails the page as an error (the child's
PageRejected state), so no device gets a `failed` row and the Map Run counts
a failed child. A throttling answer, by contrast, is retried until it goes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pushflow.domain import sending
from pushflow.validation import validate
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeedUser, seed_users
from pushflow_local.sns import ANSWER_ERROR, Fault

pytestmark = pytest.mark.e2e

PUBLISH = "PublishBatchFunction"
REQUEST: dict[str, Any] = {
    "category": "transactional",
    "audience": {"type": "users", "external_ids": ["nobody"]},
    "content": {"title": "Hi", "body": "Your order shipped"},
}


def send_to_new_users(runtime: LocalRuntime, count: int) -> tuple[str, list[int], dict[str, Any]]:
    prefix = f"refused-{uuid.uuid4().hex[:10]}"
    users = [SeedUser(f"{prefix}-{i}", devices=[("android", False)]) for i in range(count)]
    devices = seed_users(runtime, users)
    request = {
        **REQUEST,
        "audience": {"type": "users", "external_ids": [u.external_id for u in users]},
    }
    notification, _ = sending.submit(
        validate("SendRequest", request), runtime.services.repository, runtime.services.workflow
    )
    assert notification.execution_arn
    execution = runtime.wait(notification.execution_arn, timeout=60)
    return notification.id, [d.device_id for d in devices], execution


def delivery_rows(runtime: LocalRuntime, notification_id: str) -> list[tuple[Any, ...]]:
    return list(
        runtime.services.repository.run(
            "SELECT device_id, outcome FROM deliveries WHERE notification_id = CAST(:id AS uuid)",
            id=notification_id,
        )
    )


def test_an_authorization_error_fails_the_page_as_an_error_with_no_rows(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN SNS refusing every Publish: the role may not publish
    assert clean_runtime.sns is not None
    refusal = Fault(ANSWER_ERROR, "AuthorizationError")

    # WHEN a send to three devices (one page) runs
    with clean_runtime.sns.faulty(refusal):
        notification_id, devices, execution = send_to_new_users(clean_runtime, 3)

    # THEN PublishBatch was tried three times (two retries), never caught as a page failure
    raised = [type(e).__name__ for e in clean_runtime.failures.get(PUBLISH, [])]
    assert raised == ["PublishRejectedError"] * 3
    assert refusal.fired == 3 * len(devices)
    assert "RecordPageFailureFunction" not in clean_runtime.failures
    # ... no device has a row, and the Map Run counts the page as a failed child (on
    # AWS a Map Run past its tolerated failure then fails the send)
    assert delivery_rows(clean_runtime, notification_id) == []
    notification = clean_runtime.services.repository.get_notification(notification_id)
    assert notification.counts.get("failed", 0) == 0
    sfn = clean_runtime.client("stepfunctions")
    [map_run] = sfn.list_map_runs(executionArn=execution["executionArn"])["mapRuns"]
    counts = sfn.describe_map_run(mapRunArn=map_run["mapRunArn"])["itemCounts"]
    assert (counts["failed"], counts["succeeded"]) == (1, 0)


def test_throttled_answers_are_retried_until_the_page_goes(clean_runtime: LocalRuntime) -> None:
    assert clean_runtime.sns is not None
    throttled = Fault(ANSWER_ERROR, "Throttled", times=2)

    with clean_runtime.sns.faulty(throttled):
        notification_id, devices, execution = send_to_new_users(clean_runtime, 3)

    assert execution["status"] == "SUCCEEDED"
    assert throttled.fired == 2
    assert sorted(map(tuple, delivery_rows(clean_runtime, notification_id))) == [
        (d, "sent") for d in devices
    ]
