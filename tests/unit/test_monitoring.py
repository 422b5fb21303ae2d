"""What the console shows of an execution, from its events (pure, no servers)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pushflow.domain.errors import InvalidRequest
from pushflow.domain.models import Notification, NotificationStatus
from pushflow.domain.monitoring import decode_cursor, encode_cursor, send_view, state_statuses

pytestmark = pytest.mark.unit


def entered(name: str) -> dict[str, Any]:
    return {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": name}}


def exited(name: str) -> dict[str, Any]:
    return {"type": "TaskStateExited", "stateExitedEventDetails": {"name": name}}


def event(kind: str, **details: Any) -> dict[str, Any]:
    if not details:
        return {"type": kind}
    return {"type": kind, "lambdaFunctionFailedEventDetails": details}


def test_a_state_entered_and_exited_succeeded_one_entered_only_runs() -> None:
    states = state_statuses([entered("Prepare"), exited("Prepare"), entered("FanOut")])

    assert states["Prepare"] == {"status": "succeeded", "retries": 0, "error": None}
    assert states["FanOut"]["status"] == "running"


def test_a_failed_attempt_then_a_new_one_counts_a_retry_and_succeeds() -> None:
    states = state_statuses(
        [
            entered("PublishBatch"),
            event("LambdaFunctionScheduled"),
            event("LambdaFunctionFailed", error="ThrottledError", cause="SNS throttled"),
            event("LambdaFunctionScheduled"),
            event("LambdaFunctionSucceeded"),
            exited("PublishBatch"),
        ]
    )

    assert states["PublishBatch"]["status"] == "succeeded"
    assert states["PublishBatch"]["retries"] == 1
    assert states["PublishBatch"]["error"] == {"error": "ThrottledError", "cause": "SNS throttled"}


def test_a_state_that_exits_after_a_failure_was_caught() -> None:
    states = state_statuses(
        [
            entered("ResolveRecipients"),
            event("LambdaFunctionFailed", error="TransientDatabaseError", cause="gone"),
            exited("ResolveRecipients"),
            entered("RecordPageFailure"),
            exited("RecordPageFailure"),
        ]
    )

    assert states["ResolveRecipients"]["status"] == "caught"
    assert states["ResolveRecipients"]["error"]["error"] == "TransientDatabaseError"
    assert states["RecordPageFailure"]["status"] == "succeeded"


def test_a_failure_that_ends_the_execution_leaves_the_state_failed() -> None:
    states = state_statuses(
        [
            entered("Finalize"),
            event("LambdaFunctionFailed", error="States.TaskFailed", cause="boom"),
            {"type": "ExecutionFailed", "executionFailedEventDetails": {"error": "x"}},
        ]
    )

    assert states["Finalize"]["status"] == "failed"
    assert states["Finalize"]["error"] == {"error": "States.TaskFailed", "cause": "boom"}


def test_the_sends_cursor_round_trips_and_garbage_is_a_400_naming_it() -> None:
    send = Notification(
        id="0b7d3a8e-8d1c-4a57-9d7e-52c3a4f0e1aa",
        category="news",
        request={},
        status=NotificationStatus.COMPLETED,
        created_at="2026-12-04T10:00:00.123456+00:00",
    )
    created, notification_id = decode_cursor(encode_cursor(send))

    assert created.isoformat() == send.created_at
    assert notification_id == send.id
    forged = [
        "bm90IGpzb24",  # not JSON
        encode_cursor(dataclasses.replace(send, id="not-a-uuid")),
        encode_cursor(dataclasses.replace(send, created_at="yesterday")),
        "W1tdLCAxXQ",  # [[], 1]
        "é",
    ]
    for cursor in forged:
        with pytest.raises(InvalidRequest) as refused:
            decode_cursor(cursor)
        assert refused.value.field == "cursor", cursor


def test_a_send_view_tells_audience_title_and_duration() -> None:
    send = Notification(
        id="0b7d3a8e-8d1c-4a57-9d7e-52c3a4f0e1aa",
        category="news",
        request={"audience": {"type": "topic", "topic": "t"}, "content": {"title": "Hi"}},
        status=NotificationStatus.COMPLETED,
        created_at="2026-12-04T10:00:00+00:00",
        started_at="2026-12-04T10:00:01+00:00",
        completed_at="2026-12-04T10:00:03.500000+00:00",
    )
    view = send_view(send)

    assert (view["audience_type"], view["title"], view["duration_seconds"]) == ("topic", "Hi", 2.5)
