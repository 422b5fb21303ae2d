"""What publishing a page means to the domain: pushes in, one outcome per device out.

The SNS adapter (`adapters/sns_http.py`) implements `Publisher`; the send
step only sees these types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PublishStatus(StrEnum):
    """What SNS's answer (or its absence) says about one push."""

    SENT = "sent"
    # The endpoint is disabled or deleted: the device is disabled.
    ENDPOINT_DISABLED = "endpoint_disabled"
    # Not sent: SNS refused it for the account's rate; safe to send again.
    THROTTLED = "throttled"
    # Not sent: it never reached SNS (no connection); safe to send again.
    RETRYABLE = "retryable"
    # May have gone: a 5xx, a timeout or a reset after the request was written.
    # SNS has no idempotency token for mobile push, so sending it again may
    # push twice; never resent by a publisher, the caller decides.
    UNKNOWN = "unknown"
    # This one message cannot be sent (a parameter SNS rejects).
    FAILED = "failed"
    # SNS says the whole send cannot work (credentials, authorization, a
    # disabled platform application, KMS): not this device's failure.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PushMessage:
    device_id: int
    endpoint_arn: str
    message: str  # the SNS JSON message (MessageStructure=json)
    attributes: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    device_id: int
    status: PublishStatus
    message_id: str | None = None
    error: str | None = None


# Outcomes a publisher hands over before `publish` returns (see `Publisher.publish`).
EarlyOutcomes = Callable[[list[PublishOutcome]], None]


class Publisher(Protocol):
    def publish(
        self, pushes: Iterable[PushMessage], early: EarlyOutcomes | None = None
    ) -> list[PublishOutcome]:
        """One outcome per push, in the order the pushes came.

        `pushes` may be a generator: a publisher takes each push when it can
        send it, so the caller's per-push work overlaps the pushes in flight.
        `early`, if given, may be called once, when the pushes left to answer
        are the last ones in flight, with the outcomes that came so far (at
        least one): the caller writes those while it waits. `publish` still
        returns every outcome. `early` must not raise.
        """
        ...
