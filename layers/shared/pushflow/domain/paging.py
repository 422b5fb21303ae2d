"""How big a page of recipients may be.

A page travels between states as JSON, and Step Functions refuses a state
payload over 256 KiB. The page size is bounded by what the heaviest recipient
of *this* audience weighs (Prepare measures the attributes the content uses),
so a send without placeholders gets full pages and a send that personalises
with long attributes gets smaller ones, never a failed state.
"""

from __future__ import annotations

STATE_PAYLOAD_LIMIT = 256 * 1024
# Keep pages well clear of the limit: the results of a page travel with it.
PAGE_BUDGET_BYTES = 160 * 1024
# A recipient without attributes: ids, platform, locale, zone and an endpoint
# ARN of up to ~140 characters, as JSON with its keys.
RECIPIENT_BASE_BYTES = 320
# Per attribute: its key, colon and comma.
ATTRIBUTE_KEY_BYTES = 72
MIN_PAGE_SIZE = 10


def page_size_for(configured: int, attribute_bytes: int = 0, attribute_count: int = 0) -> int:
    """The page size for a send whose recipients carry at most `attribute_bytes` of values.

    `attribute_bytes` is what the values weigh as JSON, escapes included (Prepare
    measures a bound on it in PostgreSQL).
    """
    per_recipient = RECIPIENT_BASE_BYTES + attribute_count * ATTRIBUTE_KEY_BYTES + attribute_bytes
    fits = PAGE_BUDGET_BYTES // per_recipient
    return max(MIN_PAGE_SIZE, min(configured, fits))
