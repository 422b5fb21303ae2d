"""Page sizes: a page of recipients always fits in one Step Functions state (256 KiB)."""

from __future__ import annotations

import json

import pytest

from pushflow.domain.content import MAX_ATTRIBUTE_CHARS
from pushflow.domain.models import PageRef, Recipient, page_event
from pushflow.domain.paging import MIN_PAGE_SIZE, STATE_PAYLOAD_LIMIT, page_size_for

pytestmark = pytest.mark.unit

CONFIGURED = 500  # the template's default PageSize
BIGINT_MAX = 2**63 - 1
NOTIFICATION_ID = "7b1f6f0e-3c1d-4d3e-9a55-2f1c0c7e8a10"
# The longest endpoint ARN a deployment plausibly has: GovCloud partition and
# region, the sandbox platform, a 64-character application name, a UUID.
LONGEST_ENDPOINT_ARN = (
    "arn:aws-us-gov:sns:us-gov-west-1:123456789012:endpoint/APNS_SANDBOX/"
    + "pushflow-production-ios-sandbox-".ljust(64, "x")
    + "/5a3e8f8e-1c4b-3a7e-9d2f-0f6b2c1a9e11"
)
LONGEST_TIME_ZONE = "America/Argentina/ComodRivadavia"
LONG_LOCALE = "zh-Hant-TW-x-private"


def worst_case_page(page_size: int, attributes: dict[str, str]) -> str:
    """The PublishBatch input for a full page, after a Catch added its error: the
    heaviest JSON one page's state carries, as Lambda serialises it (ensure_ascii)."""
    recipients = [
        Recipient(
            device_id=BIGINT_MAX - i,
            user_id=BIGINT_MAX - i,
            platform="android",
            sandbox=True,
            endpoint_arn=LONGEST_ENDPOINT_ARN,
            locale=LONG_LOCALE,
            time_zone=LONGEST_TIME_ZONE,
            attributes=attributes,
        ).to_dict()
        for i in range(page_size)
    ]
    event = page_event(
        NOTIFICATION_ID,
        PageRef(99_999_999, BIGINT_MAX - page_size, BIGINT_MAX),
        recipients=recipients,
        filtered=[],
    )
    event["error"] = {"Error": "ThrottledError", "Cause": "x" * 4096}
    return json.dumps(event)


def attributes_of(count: int, character: str) -> dict[str, str]:
    """`count` attributes, each the longest value the API accepts, with 64-character names."""
    return {f"attribute_{n}_".ljust(64, "x"): character * MAX_ATTRIBUTE_CHARS for n in range(count)}


def json_weight(attributes: dict[str, str]) -> int:
    """What the values weigh in the page's JSON (ensure_ascii), quotes and escapes included:
    the quantity page_size_for takes (Prepare measures a bound on it in PostgreSQL)."""
    return sum(len(json.dumps(value)) for value in attributes.values())


@pytest.mark.parametrize(
    ("count", "character"),
    [
        (0, ""),
        (1, "a"),  # ASCII names
        (1, '"'),  # JSON escapes a quote: two bytes
        (1, "é"),  # Latin-1 accents: 2 bytes of UTF-8, \u00e9 (6) in JSON
        (1, "Ж"),  # Cyrillic
        (1, "中"),  # CJK: 3 bytes of UTF-8, 6 in JSON
        (1, "😀"),  # emoji: 4 bytes of UTF-8, a surrogate pair (12) in JSON
        (1, "\x1b"),  # a control character from a bad import: \u001b (6) in JSON
        (3, "é"),
        (5, "é"),
        (3, "😀"),
        (20, "a"),  # many short placeholders: the keys weigh more than the values
    ],
)
def test_a_worst_case_page_fits_in_one_state(count: int, character: str) -> None:
    # GIVEN an audience whose heaviest recipient carries these attributes
    attributes = attributes_of(count, character)

    # WHEN Prepare sizes the pages for it
    page_size = page_size_for(CONFIGURED, json_weight(attributes), len(attributes))

    # THEN a full page of such recipients stays under the state payload limit
    size = len(worst_case_page(page_size, attributes).encode("utf-8"))
    assert size < STATE_PAYLOAD_LIMIT, f"{page_size} recipients weigh {size} bytes"


def test_a_send_without_placeholders_gets_nearly_full_pages() -> None:
    assert page_size_for(CONFIGURED) > CONFIGURED * 0.8
    assert page_size_for(100) == 100


@pytest.mark.parametrize("configured", [10, 50, 100, 500, 1000])
@pytest.mark.parametrize("attribute_bytes", [0, 1, 100, 1_000, 10_000, 1_000_000])
def test_the_page_size_stays_within_its_bounds(configured: int, attribute_bytes: int) -> None:
    size = page_size_for(configured, attribute_bytes, 1)

    assert MIN_PAGE_SIZE <= size <= max(configured, MIN_PAGE_SIZE)


def test_heavier_recipients_get_smaller_pages() -> None:
    sizes = [
        page_size_for(CONFIGURED, attribute_bytes, 1) for attribute_bytes in range(0, 5000, 50)
    ]

    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > sizes[-1]
