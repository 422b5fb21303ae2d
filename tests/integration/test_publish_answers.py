"""Every SNS answer through the real PublishBatch handler: what the send does next.

Real PostgreSQL and Redis, the local runtime's SNS stand-in answering each
Publish of the page with one code (as SNS answers it: code and HTTP status),
the handler invoked as Lambda invokes it. One test per code of botocore's
SNS model, plus the query protocol's Throttling and the ambiguous answers.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from pushflow.domain import sending
from pushflow.domain.errors import PublishRejectedError, ThrottledError
from pushflow.domain.models import NotificationStatus, Outcome, PageRef
from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users
from pushflow_local.sns import (
    ANSWER_ERROR,
    DELIVER_THEN_ERROR,
    DELIVER_THEN_RESET,
    ERROR_STATUS,
    MODEL_PUBLISH_ERRORS,
    Fault,
    SnsServer,
)

pytestmark = pytest.mark.integration

PUBLISH = "PublishBatchFunction"
REQUEST: dict[str, Any] = {
    "category": "transactional",
    "audience": {"type": "all"},
    "content": {"title": "Hi", "body": "Your order shipped"},
}

DISABLES_THE_DEVICE = ("EndpointDisabled", "NotFound")
THROTTLES = ("Throttled", "Throttling", "KMSThrottling")
FAILS_THE_DEVICE = ("InvalidParameter", "ParameterValueInvalid", "ValidationException")
REJECTS_THE_SEND = (
    "AuthorizationError",
    "InvalidSecurity",
    "PlatformApplicationDisabled",
    "KMSDisabled",
    "KMSInvalidState",
    "KMSNotFound",
    "KMSAccessDenied",
    "KMSOptInRequired",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "IncompleteSignature",
    "AccessDenied",
)
MAY_HAVE_GONE = ("InternalError", "ServiceUnavailable", "InternalFailure")


def test_every_publish_error_of_the_model_has_a_test_here() -> None:
    covered = {*DISABLES_THE_DEVICE, *THROTTLES, *FAILS_THE_DEVICE, *REJECTS_THE_SEND}
    assert MODEL_PUBLISH_ERRORS - {"InternalError"} <= covered
    assert set(MAY_HAVE_GONE) <= set(ERROR_STATUS)


def stand_in(runtime: LocalRuntime) -> SnsServer:
    assert runtime.sns is not None
    return runtime.sns


def delivered(endpoint_arn: str) -> dict[str, str]:
    from moto.sns.models import sns_backends

    return dict(sns_backends[ACCOUNT][REGION].platform_endpoints[endpoint_arn].messages)


@pytest.fixture
def devices(clean_runtime: LocalRuntime) -> list[SeededDevice]:
    prefix = f"ans-{uuid.uuid4().hex[:10]}"
    users = [
        SeedUser(f"{prefix}-{i}", devices=[("ios", False), ("android", False)]) for i in range(2)
    ]
    return seed_users(clean_runtime, users)


def page_event(runtime: LocalRuntime, devices: list[SeededDevice]) -> tuple[str, dict[str, Any]]:
    """A running send and the event PublishBatch gets for its one page of `devices`."""
    repository = runtime.services.repository
    notification, _ = repository.create_notification(
        REQUEST, "transactional", NotificationStatus.RUNNING
    )
    page = PageRef(0, devices[0].device_id, devices[-1].device_id)
    resolved = sending.resolve(
        {"notification_id": notification.id, "page": page.to_dict()}, repository
    )
    return notification.id, {**resolved, "filtered": []}


def rows(runtime: LocalRuntime, notification_id: str) -> dict[int, tuple[str, str | None]]:
    found = runtime.services.repository.run(
        "SELECT device_id, outcome, error FROM deliveries"
        " WHERE notification_id = CAST(:id AS uuid)",
        id=notification_id,
    )
    return {row[0]: (row[1], row[2]) for row in found}


def enabled(runtime: LocalRuntime, devices: list[SeededDevice]) -> list[bool]:
    found = runtime.services.repository.run(
        "SELECT id, enabled FROM devices WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id",
        ids=[d.device_id for d in devices],
    )
    return [bool(row[1]) for row in found]


def publish_answered(
    runtime: LocalRuntime, devices: list[SeededDevice], code: str, action: str = ANSWER_ERROR
) -> tuple[str, dict[str, Any], BaseException | dict[str, Any]]:
    """Invoke PublishBatch for one page while SNS answers every Publish with `code`."""
    notification_id, event = page_event(runtime, devices)
    fault = Fault(action, code)
    with stand_in(runtime).faulty(fault):
        try:
            answer: BaseException | dict[str, Any] = runtime.invoke(PUBLISH, event)
        except Exception as error:
            answer = error
    assert fault.fired == len(devices)
    return notification_id, event, answer


@pytest.mark.parametrize("code", DISABLES_THE_DEVICE)
def test_a_disabled_or_deleted_endpoint_disables_the_device(
    clean_runtime: LocalRuntime, devices: list[SeededDevice], code: str
) -> None:
    notification_id, _, answer = publish_answered(clean_runtime, devices, code)

    assert isinstance(answer, dict) and answer["outcomes"] == {"endpoint_disabled": len(devices)}
    assert set(rows(clean_runtime, notification_id).values()) == {("endpoint_disabled", code)}
    assert enabled(clean_runtime, devices) == [False] * len(devices)


@pytest.mark.parametrize("code", THROTTLES)
def test_a_throttled_page_is_retried_and_then_sent_once(
    clean_runtime: LocalRuntime, devices: list[SeededDevice], code: str
) -> None:
    # WHEN SNS throttles the page (429 Throttled, 400 Throttling, KMSThrottling)
    notification_id, event, answer = publish_answered(clean_runtime, devices, code)

    # THEN the ASL is asked to retry it, with nothing recorded or delivered
    assert isinstance(answer, ThrottledError)
    assert f"{len(devices)} throttled" in str(answer)
    assert rows(clean_runtime, notification_id) == {}
    assert all(delivered(d.endpoint_arn) == {} for d in devices)

    # ... and the retry sends every device once
    retried = clean_runtime.invoke(PUBLISH, event)
    assert retried["outcomes"] == {"sent": len(devices)}
    assert all(len(delivered(d.endpoint_arn)) == 1 for d in devices)


@pytest.mark.parametrize("code", FAILS_THE_DEVICE)
def test_a_message_sns_refuses_fails_each_device_with_its_code(
    clean_runtime: LocalRuntime, devices: list[SeededDevice], code: str
) -> None:
    notification_id, _, answer = publish_answered(clean_runtime, devices, code)

    assert isinstance(answer, dict) and answer["outcomes"] == {"failed": len(devices)}
    assert set(rows(clean_runtime, notification_id).values()) == {("failed", code)}
    assert enabled(clean_runtime, devices) == [True] * len(devices)


@pytest.mark.parametrize("code", REJECTS_THE_SEND)
def test_a_refusal_of_the_whole_send_fails_the_page_as_an_error_without_rows(
    clean_runtime: LocalRuntime, devices: list[SeededDevice], code: str
) -> None:
    notification_id, event, answer = publish_answered(clean_runtime, devices, code)

    assert isinstance(answer, PublishRejectedError)
    assert code in str(answer)
    assert rows(clean_runtime, notification_id) == {}
    assert enabled(clean_runtime, devices) == [True] * len(devices)
    # Released, not settled: once SNS takes the send again, the page goes out once.
    assert clean_runtime.invoke(PUBLISH, event)["outcomes"] == {"sent": len(devices)}


def test_what_went_out_before_a_refusal_stays_recorded(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    # GIVEN SNS refusing only the Android pushes (their platform application is off)
    notification_id, event = page_event(clean_runtime, devices)
    android = frozenset(d.endpoint_arn for d in devices if d.platform == "android")
    fault = Fault(ANSWER_ERROR, "PlatformApplicationDisabled", endpoints=android)

    with stand_in(clean_runtime).faulty(fault), pytest.raises(PublishRejectedError):
        clean_runtime.invoke(PUBLISH, event)

    # THEN the iOS pushes that went out have their rows; the Android devices none
    recorded = rows(clean_runtime, notification_id)
    assert {d.device_id for d in devices if d.platform == "ios"} == set(recorded)
    assert set(recorded.values()) == {("sent", None)}


@pytest.mark.parametrize(
    ("code", "action"),
    [
        ("InternalError", DELIVER_THEN_ERROR),
        ("ServiceUnavailable", DELIVER_THEN_ERROR),
        ("InternalFailure", ANSWER_ERROR),
        ("InternalError", DELIVER_THEN_RESET),
    ],
)
def test_an_answer_that_may_hide_a_delivery_is_reported_as_unknown(
    clean_runtime: LocalRuntime,
    devices: list[SeededDevice],
    caplog: pytest.LogCaptureFixture,
    code: str,
    action: str,
) -> None:
    # WHEN SNS answers a 5xx, or resets the connection, maybe after delivering
    with caplog.at_level(logging.WARNING):
        notification_id, _, answer = publish_answered(clean_runtime, devices, code, action)

    # THEN the page is retried as today, but the doubt is named: never "throttled",
    # never a row, and each device's push was made once by the publisher
    assert isinstance(answer, ThrottledError)
    assert f"{len(devices)} unknown" in str(answer)
    assert rows(clean_runtime, notification_id) == {}
    reason = "ConnectionClosedError" if action == DELIVER_THEN_RESET else code
    assert f"{len(devices)} pushes may have gone ({reason})" in caplog.text
    copies = [len(delivered(d.endpoint_arn)) for d in devices]
    assert copies == [1 if action != ANSWER_ERROR else 0] * len(devices)


def test_a_sent_row_carries_the_message_id_sns_gave(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    notification_id, event = page_event(clean_runtime, devices)
    answer = clean_runtime.invoke(PUBLISH, event)

    assert answer["outcomes"] == {Outcome.SENT.value: len(devices)}
    found = clean_runtime.services.repository.run(
        "SELECT device_id, sns_message_id FROM deliveries"
        " WHERE notification_id = CAST(:id AS uuid)",
        id=notification_id,
    )
    by_device = {d.device_id: d for d in devices}
    for device_id, message_id in found:
        assert set(delivered(by_device[device_id].endpoint_arn)) == {message_id}
