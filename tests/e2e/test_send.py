"""Sends through the real state machine, as the local runtime runs it.

Every test seeds its own users (tokens, so SNS endpoints, are unique per test:
moto keeps endpoints and what was published to them for the whole session),
starts the send the way the API does, waits for the execution and then looks
where a user would: the notification, the `deliveries` rows, what SNS holds
per endpoint, and the execution history.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from pushflow.domain import sending
from pushflow.domain.errors import InvalidRequest, TransientDatabaseError
from pushflow.domain.models import Notification, PageRef
from pushflow.domain.paging import page_size_for
from pushflow.validation import validate
from pushflow_local.runtime import ACCOUNT, REGION, REPO_ROOT, LocalRuntime
from pushflow_local.seed import SeedUser, seed_users, varied_users
from tests.conftest import load_event

pytestmark = pytest.mark.e2e

ASL = json.loads((REPO_ROOT / "statemachines" / "send_notification.asl.json").read_text())
SEND_TIMEOUT_SECONDS = 60
# The sample send (events/api_send_notification.json): "Hi {first_name}", German variant.
SAMPLE_REQUEST: dict[str, Any] = json.loads(load_event("api_send_notification.json")["body"])
# One user with the longest first name the API takes, in two-byte letters:
# Prepare sizes pages for the heaviest recipient, so a few hundred devices
# make several pages.
LONG_NAME = "Ü" * 256


def unique_prefix() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def with_long_name(users: list[SeedUser], prefix: str) -> list[SeedUser]:
    return [
        *users,
        SeedUser(
            f"{prefix}-long",
            "de-AT",
            attributes={"first_name": LONG_NAME},
            devices=[("android", False)],
        ),
    ]


def expected_page_size(runtime: LocalRuntime) -> int:
    """What Prepare must choose for an audience whose heaviest first_name is LONG_NAME:
    pages sized by what the name weighs in the page's JSON (six bytes a letter)."""
    return page_size_for(runtime.services.settings.page_size, len(json.dumps(LONG_NAME)), 1)


def send(runtime: LocalRuntime, request: dict[str, Any]) -> tuple[Notification, dict[str, Any]]:
    """Validate and submit as the API does; wait for the execution to end."""
    notification, created = sending.submit(
        validate("SendRequest", request),
        runtime.services.repository,
        runtime.services.workflow,
    )
    assert created and notification.execution_arn
    execution = runtime.wait(notification.execution_arn, timeout=SEND_TIMEOUT_SECONDS)
    return runtime.services.repository.get_notification(notification.id), execution


def deliveries(runtime: LocalRuntime, notification_id: str) -> dict[int, tuple[Any, ...]]:
    """device id -> (page, outcome, sns_message_id, error)."""
    rows = runtime.services.repository.run(
        "SELECT device_id, page, outcome, sns_message_id, error FROM deliveries"
        " WHERE notification_id = CAST(:id AS uuid)",
        id=notification_id,
    )
    by_device = {row[0]: tuple(row[1:]) for row in rows}
    assert len(by_device) == len(rows)
    return by_device


def sns_messages(arns: Iterable[str]) -> dict[str, dict[str, str]]:
    """What SNS (moto) recorded per endpoint: message id -> message."""
    from moto.sns.models import sns_backends

    endpoints = sns_backends[ACCOUNT][REGION].platform_endpoints
    return {arn: dict(endpoints[arn].messages) for arn in arns}


def execution_count(runtime: LocalRuntime) -> int:
    paginator = runtime.client("stepfunctions").get_paginator("list_executions")
    return sum(
        len(page["executions"])
        for page in paginator.paginate(stateMachineArn=runtime.state_machine_arn)
    )


def map_run_items(runtime: LocalRuntime, execution_arn: str) -> dict[str, int]:
    """The Distributed Map's item counts: one item (a child execution) per page."""
    sfn = runtime.client("stepfunctions")
    [run] = sfn.list_map_runs(executionArn=execution_arn)["mapRuns"]
    counts: dict[str, int] = sfn.describe_map_run(mapRunArn=run["mapRunArn"])["itemCounts"]
    return counts


def completed_path() -> list[str]:
    """The parent's states for a send that nothing defers."""
    return [
        "Prepare",
        "ShouldSend",
        "HasRecipients",
        "FanOut",
        "PlanDeferred",
        "HasDeferred",
        "Finalize",
    ]


def resolve_retry_attempts() -> int:
    """How often the ASL retries ResolveRecipients on a TransientDatabaseError."""
    state = ASL["States"]["FanOut"]["ItemProcessor"]["States"]["ResolveRecipients"]
    [retrier] = [r for r in state["Retry"] if "TransientDatabaseError" in r["ErrorEquals"]]
    return int(retrier["MaxAttempts"])


class FlakyResolve:
    """Wraps Repository.resolve_page: raises TransientDatabaseError when `fails` says so."""

    def __init__(self, resolve_page: Callable[..., Any], fails: Callable[[int, PageRef], bool]):
        self._resolve_page = resolve_page
        self._fails = fails
        self._lock = threading.Lock()
        self.calls: list[int] = []  # page numbers, in call order

    def __call__(self, audience: Any, page: PageRef, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls.append(page.number)
            fail = self._fails(len(self.calls), page)
        if fail:
            raise TransientDatabaseError("PostgreSQL: server closed the connection unexpectedly")
        return self._resolve_page(audience, page, *args, **kwargs)


def title_of(message: str, platform_key: str) -> str:
    payload = json.loads(json.loads(message)[platform_key])
    if platform_key == "GCM":
        return str(payload["fcmV1Message"]["message"]["notification"]["title"])
    return str(payload["aps"]["alert"]["title"])


# -- a send to a few hundred devices -------------------------------------------------------


def test_a_send_reaches_every_device_once_with_its_platform_and_language(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN 300 users on iOS (some on sandbox builds) and Android, in several languages
    prefix = unique_prefix()
    users = with_long_name(varied_users(300, prefix=prefix), prefix)
    devices = seed_users(clean_runtime, users)
    locale_of = {u.external_id: u.locale for u in users}
    name_of = {u.external_id: u.attributes["first_name"] for u in users}
    platform_key = {
        d.device_id: "GCM" if d.platform == "android" else "APNS_SANDBOX" if d.sandbox else "APNS"
        for d in devices
    }
    assert set(platform_key.values()) == {"APNS", "APNS_SANDBOX", "GCM"}
    assert any(locale_of[d.user_external_id].startswith("de") for d in devices)
    page_size = expected_page_size(clean_runtime)
    assert len(devices) > 3 * page_size

    # WHEN the sample send goes to everyone
    notification, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the execution took the straight path and the send completed with every device sent
    assert execution["status"] == "SUCCEEDED"
    assert clean_runtime.state_path(execution["executionArn"]) == completed_path()
    assert notification.status.value == "completed"
    assert notification.counts == {"sent": len(devices)}
    assert notification.recipient_count == len(devices)
    assert notification.page_count == math.ceil(len(devices) / page_size)
    assert map_run_items(clean_runtime, execution["executionArn"])["succeeded"] == (
        notification.page_count
    )

    # AND each device has exactly one row, sent, with the id of the one message SNS holds for it
    rows = deliveries(clean_runtime, notification.id)
    assert set(rows) == {d.device_id for d in devices}
    recorded = sns_messages(d.endpoint_arn for d in devices)
    for device in devices:
        _, outcome, message_id, error = rows[device.device_id]
        assert (outcome, error) == ("sent", None)
        [(recorded_id, message)] = recorded[device.endpoint_arn].items()
        assert message_id == recorded_id

        # AND that message is SNS JSON for its platform, titled in its user's language
        key = platform_key[device.device_id]
        assert set(json.loads(message)) == {"default", key}
        greeting = "Hallo" if locale_of[device.user_external_id].startswith("de") else "Hi"
        assert title_of(message, key) == f"{greeting} {name_of[device.user_external_id]}"


# -- transient and permanent page failures ---------------------------------------------------


def test_a_page_whose_database_read_fails_once_is_retried_and_completes(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an audience of a few pages, and PostgreSQL dropping the first page read
    prefix = unique_prefix()
    devices = seed_users(clean_runtime, with_long_name(varied_users(150, prefix=prefix), prefix))
    repository = clean_runtime.services.repository
    flaky = FlakyResolve(repository.resolve_page, lambda call, page: call == 1)
    monkeypatch.setattr(repository, "resolve_page", flaky)

    # WHEN the send runs
    notification, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the failed read was retried: one read more than there are pages, every page read
    assert execution["status"] == "SUCCEEDED"
    pages = notification.page_count
    assert pages == math.ceil(len(devices) / expected_page_size(clean_runtime)) > 1
    assert len(flaky.calls) == pages + 1
    assert sorted(set(flaky.calls)) == list(range(pages))
    [failure] = clean_runtime.failures["ResolveRecipientsFunction"]
    assert isinstance(failure, TransientDatabaseError)
    assert map_run_items(clean_runtime, execution["executionArn"])["failed"] == 0
    # AND the send is whole: every device sent exactly once
    assert notification.status.value == "completed"
    assert notification.counts == {"sent": len(devices)}
    rows = deliveries(clean_runtime, notification.id)
    assert {device: row[1] for device, row in rows.items()} == {
        d.device_id: "sent" for d in devices
    }
    recorded = sns_messages(d.endpoint_arn for d in devices)
    assert all(len(messages) == 1 for messages in recorded.values())


def test_a_page_that_keeps_failing_is_recorded_failed_and_the_others_are_sent(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an audience of a few pages whose page 1 can never be read
    prefix = unique_prefix()
    devices = seed_users(clean_runtime, with_long_name(varied_users(150, prefix=prefix), prefix))
    repository = clean_runtime.services.repository
    flaky = FlakyResolve(repository.resolve_page, lambda call, page: page.number == 1)
    monkeypatch.setattr(repository, "resolve_page", flaky)
    page_size = expected_page_size(clean_runtime)
    by_id = sorted(d.device_id for d in devices)
    lost = set(by_id[page_size : 2 * page_size])

    # WHEN the send runs
    notification, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the ASL gave up on page 1 after its retries, and the send still completed
    assert execution["status"] == "SUCCEEDED"
    assert notification.page_count is not None and notification.page_count > 2
    assert flaky.calls.count(1) == 1 + resolve_retry_attempts()
    assert notification.status.value == "completed_with_failures"
    assert notification.counts == {"sent": len(devices) - len(lost), "failed": len(lost)}

    # AND page 1's devices have failed rows naming the error, and got nothing from SNS
    rows = deliveries(clean_runtime, notification.id)
    assert set(rows) == set(by_id)
    failed = {device for device, row in rows.items() if row[1] == "failed"}
    assert failed == lost
    for device in lost:
        page, _, message_id, error = rows[device]
        assert (page, message_id) == (1, None)
        assert error.startswith("TransientDatabaseError")
        assert "server closed the connection unexpectedly" in error
    recorded = sns_messages(d.endpoint_arn for d in devices)
    for device in devices:
        assert len(recorded[device.endpoint_arn]) == (0 if device.device_id in lost else 1)


# -- refused requests ------------------------------------------------------------------------


def without(request: dict[str, Any], path: str) -> dict[str, Any]:
    changed = json.loads(json.dumps(request))
    *parents, last = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    del target[last]
    return changed


def nothing_stored(runtime: LocalRuntime) -> bool:
    counts = runtime.services.repository.run(
        "SELECT (SELECT count(*) FROM notifications), (SELECT count(*) FROM deliveries)"
    )
    return bool(counts == [[0, 0]])


@pytest.mark.parametrize("field", ["content", "content.body", "audience", "category"])
def test_a_send_missing_a_required_field_is_refused_naming_it(
    clean_runtime: LocalRuntime, field: str
) -> None:
    seed_users(clean_runtime, varied_users(5, prefix=unique_prefix()))
    executions_before = execution_count(clean_runtime)
    request = without(SAMPLE_REQUEST, field)

    # WHEN the request comes in as the API takes it: validated, then submitted
    with pytest.raises(InvalidRequest) as raised:
        sending.submit(
            validate("SendRequest", request),
            clean_runtime.services.repository,
            clean_runtime.services.workflow,
        )

    # THEN it is refused naming the field, and nothing was stored or started
    assert raised.value.field == field
    assert field in raised.value.message
    assert nothing_stored(clean_runtime)
    assert execution_count(clean_runtime) == executions_before


def test_content_without_a_body_is_refused_even_when_submitted_unvalidated(
    clean_runtime: LocalRuntime,
) -> None:
    executions_before = execution_count(clean_runtime)

    with pytest.raises(InvalidRequest) as raised:
        sending.submit(
            without(SAMPLE_REQUEST, "content.body"),
            clean_runtime.services.repository,
            clean_runtime.services.workflow,
        )

    assert raised.value.field == "content.body"
    assert nothing_stored(clean_runtime)
    assert execution_count(clean_runtime) == executions_before


@pytest.mark.parametrize("field", ["content", "content.body"])
def test_the_api_answers_400_naming_the_missing_field(
    clean_runtime: LocalRuntime, field: str
) -> None:
    # GIVEN the sample API event with a field taken out of its body
    event = load_event("api_send_notification.json")
    event["body"] = json.dumps(without(json.loads(event["body"]), field))
    executions_before = execution_count(clean_runtime)

    # WHEN API Gateway hands it to the ApiFunction
    response = clean_runtime.invoke("ApiFunction", event)

    # THEN the caller gets a 400 that names the field, and nothing happened
    assert response["statusCode"] == 400
    body = json.loads(response["body"])
    assert body["error"] == "invalid_request"
    assert body["field"] == field
    assert field in body["message"]
    assert nothing_stored(clean_runtime)
    assert execution_count(clean_runtime) == executions_before


def test_the_api_accepts_the_sample_event_and_starts_one_send(clean_runtime: LocalRuntime) -> None:
    # The counterpart of the refusals above: the unaltered sample is accepted.
    devices = seed_users(clean_runtime, varied_users(5, prefix=unique_prefix()))

    response = clean_runtime.invoke("ApiFunction", load_event("api_send_notification.json"))

    assert response["statusCode"] == 202
    body = json.loads(response["body"])
    execution = clean_runtime.wait(body["execution_arn"], timeout=SEND_TIMEOUT_SECONDS)
    assert execution["status"] == "SUCCEEDED"
    notification = clean_runtime.services.repository.get_notification(body["notification_id"])
    assert notification.counts == {"sent": len(devices)}


# -- Step Functions limits --------------------------------------------------------------------


def test_the_parent_history_does_not_grow_with_the_number_of_pages(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN a small audience and one of many pages, the same heaviest recipient in both
    prefix = unique_prefix()
    small = with_long_name(varied_users(30, prefix=f"{prefix}-s"), prefix)
    large = [*varied_users(420, prefix=f"{prefix}-l"), small[-1]]
    seed_users(clean_runtime, [*small[:-1], *large])

    def to(users: list[SeedUser]) -> dict[str, Any]:
        return {
            **SAMPLE_REQUEST,
            "audience": {"type": "users", "external_ids": [u.external_id for u in users]},
        }

    # WHEN both are sent
    one_page, small_execution = send(clean_runtime, to(small))
    many_pages, large_execution = send(clean_runtime, to(large))

    # THEN both complete, and the parent's history has the same events for 1 page as for 6+
    assert (small_execution["status"], large_execution["status"]) == ("SUCCEEDED", "SUCCEEDED")
    assert (one_page.page_count, one_page.status.value) == (1, "completed")
    assert many_pages.page_count is not None and many_pages.page_count >= 6
    assert many_pages.status.value == "completed"
    assert many_pages.counts["sent"] == many_pages.recipient_count
    small_history = clean_runtime.history(small_execution["executionArn"])
    large_history = clean_runtime.history(large_execution["executionArn"])
    assert [e["type"] for e in large_history] == [e["type"] for e in small_history]
    assert map_run_items(clean_runtime, large_execution["executionArn"])["total"] == (
        many_pages.page_count
    )
