"""What publishing a page means to the domain: pushes in, one outcome per device out.

The SNS adapters (`adapters/sns.py`, and any lighter client) implement
`Publisher`; the send step only sees these types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PublishStatus(StrEnum):
    SENT = "sent"
    ENDPOINT_DISABLED = "endpoint_disabled"
    THROTTLED = "throttled"
    RETRYABLE = "retryable"
    FAILED = "failed"


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


class Publisher(Protocol):
    def publish(self, pushes: Sequence[PushMessage]) -> list[PublishOutcome]: ...
