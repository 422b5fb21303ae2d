"""Publishing to SNS platform endpoints through the SNS stand-in: outcomes, and
throttling without double pushes. The publisher is the deployed one."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest

from pushflow.adapters.sns_http import SnsHttpPublisher
from pushflow.domain import sending
from pushflow.domain.content import render
from pushflow.domain.errors import ThrottledError, TransientDatabaseError
from pushflow.domain.models import Notification, NotificationStatus, Outcome, PageRef
from pushflow.domain.payloads import build_sns_message
from pushflow.domain.publishing import PublishStatus, PushMessage
from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, disable_endpoints, seed_users
from pushflow_local.sns import ANSWER_ERROR, HOLD, Fault, SnsServer

pytestmark = pytest.mark.integration

CONTENT: dict[str, Any] = {
    "title": "Hi {first_name}",
    "body": "Your order shipped",
    "localizations": {"de": {"title": "Hallo {first_name}", "body": "Deine Bestellung ist da"}},
}
REQUEST: dict[str, Any] = {
    "category": "transactional",
    "audience": {"type": "all"},
    "content": CONTENT,
}


def recorded(endpoint_arn: str) -> dict[str, str]:
    """What was delivered to one endpoint: message id -> message."""
    from moto.sns.models import sns_backends

    return dict(sns_backends[ACCOUNT][REGION].platform_endpoints[endpoint_arn].messages)


def push_to(device: SeededDevice, name: str = "Anna") -> PushMessage:
    rendered = render(CONTENT, "en", {"first_name": name})
    message = build_sns_message(rendered, device.platform, device.sandbox)  # type: ignore[arg-type]
    return PushMessage(
        device.device_id, device.endpoint_arn, message.message, message.message_attributes
    )


def stand_in(runtime: LocalRuntime) -> SnsServer:
    assert runtime.sns is not None
    return runtime.sns


def publisher_of(runtime: LocalRuntime, concurrency: int) -> SnsHttpPublisher:
    """The deployed publisher, as services.py builds it, with `concurrency` in flight."""
    return SnsHttpPublisher(stand_in(runtime).url, concurrency=concurrency)


@pytest.fixture
def devices(clean_runtime: LocalRuntime) -> list[SeededDevice]:
    # Tokens (so endpoints) unique per test: moto keeps endpoints and their messages all session.
    prefix = f"pub-{uuid.uuid4().hex[:10]}"
    users = [
        SeedUser(
            f"{prefix}-{i}",
            "de" if i % 2 else "en",
            attributes={"first_name": f"User{i}"},
            devices=[("ios", i % 3 == 0), ("android", False)],
        )
        for i in range(6)
    ]
    return seed_users(clean_runtime, users)


# -- the publisher -------------------------------------------------------------------


def test_a_push_to_an_enabled_endpoint_is_sent_with_the_sns_message_id(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    device = next(d for d in devices if d.platform == "ios")
    push = push_to(device)

    [outcome] = clean_runtime.services.publisher.publish([push])

    assert outcome.status is PublishStatus.SENT
    assert outcome.device_id == device.device_id
    assert recorded(device.endpoint_arn) == {outcome.message_id: push.message}


def test_a_push_to_a_disabled_endpoint_reports_it_disabled_and_is_not_delivered(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    device = devices[0]
    disable_endpoints(clean_runtime, [device.endpoint_arn])

    [outcome] = clean_runtime.services.publisher.publish([push_to(device)])

    assert outcome.status is PublishStatus.ENDPOINT_DISABLED
    assert outcome.error == "EndpointDisabled"
    assert outcome.message_id is None
    assert recorded(device.endpoint_arn) == {}


def test_outcomes_come_back_in_the_order_of_the_pushes(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    disabled = devices[1::2]
    disable_endpoints(clean_runtime, [d.endpoint_arn for d in disabled])

    outcomes = clean_runtime.services.publisher.publish([push_to(d) for d in devices])

    assert [o.device_id for o in outcomes] == [d.device_id for d in devices]
    assert [o.status for o in outcomes] == [
        PublishStatus.ENDPOINT_DISABLED if d in disabled else PublishStatus.SENT for d in devices
    ]


def test_publishing_nothing_calls_nothing(clean_runtime: LocalRuntime) -> None:
    assert clean_runtime.services.publisher.publish([]) == []


# -- sending.publish under throttling --------------------------------------------------


def page_of(
    runtime: LocalRuntime, devices: list[SeededDevice]
) -> tuple[Notification, PageRef, dict[str, Any]]:
    """A running send, one page holding `devices`, and the event PublishBatch gets for it."""
    repository = runtime.services.repository
    notification, _ = repository.create_notification(
        REQUEST, "transactional", NotificationStatus.RUNNING
    )
    page = PageRef(0, devices[0].device_id, devices[-1].device_id)
    resolved = sending.resolve(
        {"notification_id": notification.id, "page": page.to_dict()}, repository
    )
    event = {**resolved, "filtered": []}  # as FilterRecipients passes a page it keeps whole
    assert len(event["recipients"]) == len(devices)
    return notification, page, event


def test_a_throttled_page_records_what_went_out_and_the_retry_pushes_only_the_rest(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    # GIVEN a page of a send, and SNS throttling the first 4 publishes
    repository = clean_runtime.services.repository
    notification, _, event = page_of(clean_runtime, devices)
    sns = stand_in(clean_runtime)
    publisher = publisher_of(clean_runtime, concurrency=4)
    published_before = sns.published
    throttled_answers = Fault(ANSWER_ERROR, "Throttled", times=4)

    # WHEN the page is published
    with sns.faulty(throttled_answers), pytest.raises(ThrottledError):
        sending.publish(event, repository, repository, publisher)
    assert throttled_answers.fired == 4

    # THEN the pushes that went out are recorded before the retry is asked for
    first_rows = {d: r for d, r in repository.page_deliveries(notification.id, 0).items()}
    assert len(first_rows) == len(devices) - 4
    assert {r.outcome.value for r in first_rows.values()} == {"sent"}
    by_id = {d.device_id: d for d in devices}
    for device_id, row in first_rows.items():
        assert set(recorded(by_id[device_id].endpoint_arn)) == {row.sns_message_id}
    throttled = [d for d in devices if d.device_id not in first_rows]
    assert all(recorded(d.endpoint_arn) == {} for d in throttled)

    # WHEN the ASL retries the same event
    retried = sending.publish(event, repository, repository, publisher)
    sending.record(retried, repository)

    # THEN every device has exactly one push, and one row carrying its message id
    assert retried["recorded"] is True
    assert retried["outcomes"] == {"sent": len(devices)}
    final_rows = repository.page_deliveries(notification.id, 0)
    assert set(final_rows) == set(by_id)
    assert sns.published - published_before == len(devices)
    publisher.close()
    for device in devices:
        messages = recorded(device.endpoint_arn)
        assert len(messages) == 1, device
        assert final_rows[device.device_id].outcome is Outcome.SENT
        assert set(messages) == {final_rows[device.device_id].sns_message_id}
    for device_id, row in first_rows.items():
        assert final_rows[device_id].sns_message_id == row.sns_message_id
    # The localized title reached the German recipients.
    german = next(d for d in devices if d.user_external_id.endswith("-1"))
    [message] = recorded(german.endpoint_arn).values()
    payload = json.loads(message)
    key = "GCM" if german.platform == "android" else "APNS_SANDBOX" if german.sandbox else "APNS"
    platform_payload = json.loads(payload[key])
    assert "Hallo User1" in json.dumps(platform_payload, ensure_ascii=False)


def test_the_publisher_hands_over_early_the_outcomes_of_a_page_that_came(
    clean_runtime: LocalRuntime, devices: list[SeededDevice]
) -> None:
    # GIVEN SNS holding the answer to the page's last push until outcomes were handed over
    release = threading.Event()
    held = Fault(HOLD, endpoints=frozenset({devices[-1].endpoint_arn}), release=release)
    publisher = publisher_of(clean_runtime, concurrency=4)
    early: list[list[int]] = []

    def take_early(known: list[Any]) -> None:
        early.append([o.device_id for o in known])
        release.set()

    # WHEN the page is published
    try:
        with stand_in(clean_runtime).faulty(held):
            outcomes = publisher.publish((push_to(d) for d in devices), take_early)
    finally:
        release.set()
        publisher.close()

    # THEN every outcome comes back, and the early ones once, without the held push's
    assert [o.device_id for o in outcomes] == [d.device_id for d in devices]
    assert all(o.status is PublishStatus.SENT for o in outcomes)
    [handed] = early
    assert 1 <= len(handed) < len(devices)
    assert devices[-1].device_id not in handed
    assert set(handed) <= {d.device_id for d in devices}


class FailingOnce:
    """Wraps a method: its first call raises `error` (without calling it), the rest go through."""

    def __init__(
        self, target: Any, name: str, error: Exception, then: threading.Event | None = None
    ) -> None:
        self.original = getattr(target, name)
        self.error = error
        self.then = then
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        if len(self.calls) == 1:
            if self.then is not None:
                self.then.set()
            raise self.error
        return self.original(*args)


def test_what_the_early_write_could_not_write_is_written_with_the_rest(
    clean_runtime: LocalRuntime,
    devices: list[SeededDevice],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN a page of 12 pushes, 4 in flight, the last one answered only after the
    # early write (SNS holds it)
    repository = clean_runtime.services.repository
    notification, page, event = page_of(clean_runtime, devices)
    release = threading.Event()
    held = Fault(HOLD, endpoints=frozenset({devices[-1].endpoint_arn}), release=release)
    # ... and PostgreSQL failing once: in the early write
    error = TransientDatabaseError("gone")
    wrapped = FailingOnce(repository, "record_deliveries", error, then=release)
    monkeypatch.setattr(repository, "record_deliveries", wrapped)

    # WHEN the page is published
    publisher = publisher_of(clean_runtime, concurrency=4)
    try:
        with stand_in(clean_runtime).faulty(held):
            answer = sending.publish(event, repository, repository, publisher)
    finally:
        release.set()
        publisher.close()

    # THEN nothing is raised: the failed part went again with the rest, and every
    # device has its row, with the message id SNS gave it
    assert len(wrapped.calls) == 2
    assert answer["recorded"] is True
    assert answer["outcomes"] == {"sent": len(devices)}
    rows = repository.page_deliveries(notification.id, page.number)
    assert set(rows) == {d.device_id for d in devices}
    by_id = {d.device_id: d for d in devices}
    assert all(set(recorded(by_id[d].endpoint_arn)) == {rows[d].sns_message_id} for d in rows)
    assert all(len(recorded(d.endpoint_arn)) == 1 for d in devices)
    assert "early write of a page failed" in caplog.text


def test_a_page_is_written_in_two_parts_none_twice(
    clean_runtime: LocalRuntime, devices: list[SeededDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a page whose last two pushes are answered only once rows were written
    repository = clean_runtime.services.repository
    _, _, event = page_of(clean_runtime, devices)
    release = threading.Event()
    held = Fault(HOLD, endpoints=frozenset(d.endpoint_arn for d in devices[-2:]), release=release)
    written: list[list[int]] = []
    original = repository.record_deliveries

    def record(notification_id: str, number: int, results: Any, released: Any = ()) -> int:
        results = list(results)
        written.append([r.device_id for r in results])
        release.set()
        return int(original(notification_id, number, results, released))

    monkeypatch.setattr(repository, "record_deliveries", record)

    # WHEN it is published, 4 in flight
    publisher = publisher_of(clean_runtime, concurrency=4)
    try:
        with stand_in(clean_runtime).faulty(held):
            sending.publish(event, repository, repository, publisher)
    finally:
        publisher.close()

    # THEN the rows of pushes answered went in while the last two were held, the
    # last two after; every device once
    assert held.fired == 2
    early, rest = written
    assert len(early) >= 1
    assert {d.device_id for d in devices[-2:]} <= set(rest)
    assert sorted(early + rest) == sorted(d.device_id for d in devices)
