"""The token lifecycle against real PostgreSQL and moto's SNS, through the real handlers.

SNS's endpoint events (the sample events in events/) reach TokenLifecycleFunction;
the daily sweep is DeviceSweepFunction. A test looks where an operator would:
the device's row, and what SNS still holds.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pushflow.domain import registration
from pushflow.domain.token_lifecycle import (
    Action,
    TokenEvent,
    TokenEventType,
    decide,
    parse_sns_event,
)
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users
from tests.conftest import load_event

pytestmark = pytest.mark.integration

UPDATED = "token_lifecycle_endpoint_updated.json"
DELETED = "token_lifecycle_endpoint_deleted.json"
DELIVERY_FAILURE = "token_lifecycle_delivery_failure.json"


def _event(name: str, endpoint_arn: str, at: datetime | None = None, **changes: Any) -> Any:
    """A sample SNS event for another endpoint (and time), as SNS would send it."""
    event = copy.deepcopy(load_event(name))
    sns = event["Records"][0]["Sns"]
    message = json.loads(sns["Message"])
    message["EndpointArn"] = endpoint_arn
    message["Time"] = (at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    message.update(changes)
    sns["Message"] = json.dumps(message)
    return event


def _devices(runtime: LocalRuntime, count: int = 3) -> list[SeededDevice]:
    prefix = uuid.uuid4().hex[:8]
    return seed_users(
        runtime,
        [SeedUser(f"lifecycle-{prefix}-{i}", devices=(("android", False),)) for i in range(count)],
    )


def _row(runtime: LocalRuntime, device_id: int) -> tuple[Any, ...] | None:
    rows = runtime.services.repository.run(
        "SELECT enabled, disabled_reason, disabled_at FROM devices WHERE id = :id", id=device_id
    )
    return tuple(rows[0]) if rows else None


def _endpoint_exists(runtime: LocalRuntime, arn: str) -> bool:
    from moto.sns.models import sns_backends

    from pushflow_local.runtime import ACCOUNT, REGION

    return arn in sns_backends[ACCOUNT][REGION].platform_endpoints


def test_an_endpoint_sns_disabled_disables_its_device_only(clean_runtime: LocalRuntime) -> None:
    # GIVEN three registered devices
    target, *others = _devices(clean_runtime)
    seen_at = datetime.now(UTC) + timedelta(seconds=1)

    # WHEN SNS reports the first one's endpoint disabled (APNs/FCM rejected the token)
    result = clean_runtime.invoke(
        "TokenLifecycleFunction", _event(UPDATED, target.endpoint_arn, seen_at)
    )

    # THEN that device is disabled, with why and when SNS saw it; the others are untouched
    assert result == {"disabled": 1, "removed": 0, "ignored": 0, "unreadable": 0, "stale": 0}
    enabled, reason, disabled_at = _row(clean_runtime, target.device_id) or ()
    assert (enabled, reason) == (False, "endpoint_disabled")
    assert abs(disabled_at - seen_at) < timedelta(milliseconds=1)
    for device in others:
        assert _row(clean_runtime, device.device_id) == (True, None, None)
    # AND a send plans no page for it any more
    pages = clean_runtime.services.repository.plan_pages({"type": "all"}, 500)
    assert sum(count for _page, count in pages) == len(others)


def test_delivery_failures_disable_only_when_the_token_is_to_blame(
    clean_runtime: LocalRuntime,
) -> None:
    dead, healthy = _devices(clean_runtime, 2)
    later = datetime.now(UTC) + timedelta(seconds=1)

    # A payload APNs/FCM refused is not the device's fault ...
    ignored = clean_runtime.invoke(
        "TokenLifecycleFunction",
        _event(DELIVERY_FAILURE, healthy.endpoint_arn, later, FailureType="InvalidNotification"),
    )
    # ... a disabled endpoint is.
    disabled = clean_runtime.invoke(
        "TokenLifecycleFunction", _event(DELIVERY_FAILURE, dead.endpoint_arn, later)
    )

    assert (ignored["ignored"], ignored["disabled"]) == (1, 0)
    assert _row(clean_runtime, healthy.device_id) == (True, None, None)
    assert disabled["disabled"] == 1
    assert _row(clean_runtime, dead.device_id)[:2] == (  # type: ignore[index]
        False,
        "delivery_failure:EndpointDisabled",
    )


def test_a_deleted_endpoint_removes_its_device(clean_runtime: LocalRuntime) -> None:
    gone, kept = _devices(clean_runtime, 2)
    result = clean_runtime.invoke(
        "TokenLifecycleFunction",
        _event(DELETED, gone.endpoint_arn, datetime.now(UTC) + timedelta(seconds=1)),
    )
    assert result["removed"] == 1
    assert _row(clean_runtime, gone.device_id) is None
    assert _row(clean_runtime, kept.device_id) == (True, None, None)


def test_a_stale_event_does_not_undo_a_newer_registration(clean_runtime: LocalRuntime) -> None:
    # GIVEN a device registered (again) after SNS saw its endpoint fail
    (device,) = _devices(clean_runtime, 1)
    before_registration = datetime.now(UTC) - timedelta(minutes=5)

    # WHEN the late event arrives (SNS retries, a replay from the dead-letter queue)
    result = clean_runtime.invoke(
        "TokenLifecycleFunction", _event(UPDATED, device.endpoint_arn, before_registration)
    )

    # THEN the device stays enabled
    assert (result["disabled"], result["stale"]) == (0, 1)
    assert _row(clean_runtime, device.device_id) == (True, None, None)


def test_registering_the_same_token_again_enables_the_device(clean_runtime: LocalRuntime) -> None:
    # GIVEN a device registered through the API's domain code, then disabled by SNS's event
    services = clean_runtime.services
    applications = {("ios", False): clean_runtime.platform_applications["APNS"]}
    token = uuid.uuid4().hex + uuid.uuid4().hex
    request = {"platform": "ios", "token": token}
    device, created = registration.register_device(
        "lifecycle-reregister", request, services.repository, services.endpoints, applications
    )
    assert created
    clean_runtime.invoke(
        "TokenLifecycleFunction",
        _event(UPDATED, device.endpoint_arn, datetime.now(UTC) + timedelta(seconds=1)),
    )
    assert _row(clean_runtime, device.id)[0] is False  # type: ignore[index]

    # WHEN the app registers the same token again
    again, created_again = registration.register_device(
        "lifecycle-reregister", request, services.repository, services.endpoints, applications
    )

    # THEN it is the same device, enabled, with its reason cleared
    assert (again.id, created_again, again.enabled) == (device.id, False, True)
    assert _row(clean_runtime, device.id) == (True, None, None)


def test_an_unreadable_record_is_reported_and_the_rest_applied(
    clean_runtime: LocalRuntime,
) -> None:
    (device,) = _devices(clean_runtime, 1)
    event = _event(DELETED, device.endpoint_arn, datetime.now(UTC) + timedelta(seconds=1))
    broken = copy.deepcopy(event["Records"][0])
    broken["Sns"]["Message"] = "not json"
    event["Records"].insert(0, broken)

    result = clean_runtime.invoke("TokenLifecycleFunction", event)

    assert (result["unreadable"], result["removed"]) == (1, 1)


def test_the_sweep_removes_devices_disabled_past_the_retention_and_their_endpoints(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN devices disabled 40 days ago, 2 days ago, and one still enabled
    old, recent, active = _devices(clean_runtime, 3)
    repository = clean_runtime.services.repository
    now = clean_runtime.clock.now()
    for device, disabled_for in ((old, timedelta(days=40)), (recent, timedelta(days=2))):
        repository.run(
            "UPDATE devices SET enabled = false, disabled_reason = 'endpoint_disabled',"
            " disabled_at = :at WHERE id = :id",
            at=now - disabled_for,
            id=device.device_id,
        )

    # WHEN the daily sweep runs (retention from the template: 30 days)
    assert clean_runtime.environment["DISABLED_DEVICE_RETENTION_DAYS"] == "30"
    result = clean_runtime.invoke("DeviceSweepFunction", load_event("token_lifecycle_sweep.json"))

    # THEN only the long-disabled device is gone, with its SNS endpoint
    assert result == {"removed": 1, "endpoints_deleted": 1, "endpoint_errors": 0, "finished": True}
    assert _row(clean_runtime, old.device_id) is None
    assert not _endpoint_exists(clean_runtime, old.endpoint_arn)
    assert _row(clean_runtime, recent.device_id) is not None
    assert _endpoint_exists(clean_runtime, recent.endpoint_arn)
    assert _row(clean_runtime, active.device_id) == (True, None, None)


# -- the rules, without servers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "changes", "action"),
    [
        (TokenEventType.ENDPOINT_UPDATED, {"enabled": False}, Action.DISABLE),
        (TokenEventType.ENDPOINT_UPDATED, {"failure_type": "InvalidPlatformToken"}, Action.DISABLE),
        (TokenEventType.ENDPOINT_UPDATED, {"enabled": True}, Action.IGNORE),
        (TokenEventType.ENDPOINT_UPDATED, {}, Action.IGNORE),
        (TokenEventType.ENDPOINT_DELETED, {}, Action.REMOVE),
        (TokenEventType.DELIVERY_FAILURE, {"failure_type": "EndpointDisabled"}, Action.DISABLE),
        (TokenEventType.DELIVERY_FAILURE, {"failure_type": "InvalidPlatformToken"}, Action.DISABLE),
        (TokenEventType.DELIVERY_FAILURE, {"failure_type": "InvalidNotification"}, Action.IGNORE),
        (TokenEventType.DELIVERY_FAILURE, {}, Action.IGNORE),
    ],
)
def test_what_each_event_does_to_a_device(
    event_type: TokenEventType, changes: dict[str, Any], action: Action
) -> None:
    event = TokenEvent(event_type, "arn:aws:sns:us-east-1:1:endpoint/GCM/a/b", datetime.now(UTC))
    assert decide(dataclasses.replace(event, **changes)).action is action


@pytest.mark.parametrize("name", [UPDATED, DELETED, DELIVERY_FAILURE])
def test_the_sample_events_parse(name: str) -> None:
    events, unreadable = parse_sns_event(load_event(name))
    assert unreadable == []
    (event,) = events
    assert event.endpoint_arn.startswith("arn:aws:sns:")
    assert event.occurred_at.tzinfo is not None
