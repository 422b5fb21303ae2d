"""The shapes that flow between states: page keys, recipients, delivery results."""

from __future__ import annotations

import json

import pytest

from pushflow.domain.models import DeliveryResult, Outcome, PageRef, Recipient, page_event

pytestmark = pytest.mark.unit

NOTIFICATION_ID = "7b1f6f0e-3c1d-4d3e-9a55-2f1c0c7e8a10"
PLAN_PREFIX = f"plans/{NOTIFICATION_ID}/send-{NOTIFICATION_ID}/"


@pytest.mark.parametrize(
    "page",
    [
        PageRef(0, 1, 1),
        PageRef(42, 1001, 1500),
        PageRef(99_999_999, 9_223_372_036_854_775_000, 9_223_372_036_854_775_807),
    ],
)
def test_a_page_survives_the_trip_through_its_s3_key(page: PageRef) -> None:
    # GIVEN a page written to the plan as an S3 key
    key = PLAN_PREFIX + page.key()

    # WHEN a child execution reads it back from the key alone
    # THEN it is the same page
    assert PageRef.from_key(key) == page
    assert PageRef.from_event({"notification_id": NOTIFICATION_ID, "page_key": key}) == page


def test_the_key_names_the_page_number_and_its_device_range() -> None:
    assert PageRef(42, 1001, 1500).key() == "00000042_1001-1500"


def test_s3_lists_the_pages_of_a_plan_in_page_order() -> None:
    # ListObjectsV2 returns keys in lexicographic order: the Map sees page 2 before page 10.
    pages = [PageRef(n, n * 500 + 1, n * 500 + 500) for n in (0, 1, 2, 9, 10, 11, 100, 1000)]

    listed = sorted(PLAN_PREFIX + page.key() for page in pages)

    assert [PageRef.from_key(key).number for key in listed] == [p.number for p in pages]


@pytest.mark.parametrize(
    "key",
    ["", "plans/x/y/", "00000001", "00000001_12", "page_1-2", "00000001_a-b", "00000001_1_2"],
)
def test_a_key_that_is_not_a_page_is_refused_naming_the_key(key: str) -> None:
    with pytest.raises(ValueError, match="not a page key") as raised:
        PageRef.from_key(key)

    assert repr(key) in str(raised.value)


def test_a_resolved_page_event_carries_its_page_as_an_object() -> None:
    page = PageRef(3, 10, 20)

    event = page_event(NOTIFICATION_ID, page, recipients=[])

    assert event == {
        "notification_id": NOTIFICATION_ID,
        "page": {"number": 3, "first_device_id": 10, "last_device_id": 20},
        "recipients": [],
    }
    # Once resolved, the page object wins over the plan's key.
    assert PageRef.from_event({**event, "page_key": PLAN_PREFIX + "00000009_1-2"}) == page


@pytest.mark.parametrize("attributes", [{}, {"first_name": "Jörg", "plan": "pro", "visits": 3}])
def test_a_recipient_survives_the_trip_through_json(attributes: dict[str, object]) -> None:
    recipient = Recipient(
        device_id=12,
        user_id=7,
        platform="ios",
        sandbox=True,
        endpoint_arn="arn:aws:sns:us-east-1:123456789012:endpoint/APNS_SANDBOX/app/5a3e8f8e",
        locale="de-AT",
        time_zone="Europe/Vienna",
        attributes=attributes,
    )

    raw = json.loads(json.dumps(recipient.to_dict()))

    assert Recipient.from_dict(raw) == recipient
    # No attributes: no key at all, to keep big pages small.
    assert ("attributes" in raw) is bool(attributes)


@pytest.mark.parametrize(
    "result",
    [
        DeliveryResult(1, 2, Outcome.SENT, sns_message_id="0f3c2b1a-9d8e-5f4a-8b7c-6d5e4f3a2b1c"),
        DeliveryResult(1, 2, Outcome.ENDPOINT_DISABLED, error="EndpointDisabled"),
        DeliveryResult(1, 2, Outcome.OPTED_OUT),
    ],
)
def test_a_delivery_result_survives_the_trip_through_json(result: DeliveryResult) -> None:
    raw = json.loads(json.dumps(result.to_dict()))

    assert DeliveryResult.from_dict(raw) == result
    assert raw["outcome"] == result.outcome.value


def test_a_result_with_an_outcome_the_schema_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="delivered"):
        DeliveryResult.from_dict({"device_id": 1, "user_id": 2, "outcome": "delivered"})
