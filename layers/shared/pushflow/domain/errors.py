"""Domain errors.

The class names are part of the contract with the state machine: the ASL
retries and catches by exception name (never by message), so renaming one
means changing `statemachines/send_notification.asl.json` too.
"""

from __future__ import annotations


class PushflowError(Exception):
    """Base of every error Pushflow raises on purpose."""


class InvalidRequest(PushflowError):
    """Input that can never succeed; answered with a 4xx naming the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"error": "invalid_request", "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class UnsupportedEvent(InvalidRequest):
    """A function was invoked with an event of a shape it does not take."""


class UnfillablePlaceholder(InvalidRequest):
    """Some recipients have no attribute for a placeholder: the send is refused whole."""


class NotFound(PushflowError):
    """The thing asked for does not exist (or is not the caller's)."""


class Forbidden(PushflowError):
    """The caller may not touch this (another user's device, say)."""


class Unauthorized(PushflowError):
    """No usable credentials came with the request."""


class Conflict(PushflowError):
    """The request contradicts what already happened (e.g. an idempotency key reused)."""


class TransientError(PushflowError):
    """Worth retrying: the ASL retries subclasses with backoff."""


class TransientDatabaseError(TransientError):
    """PostgreSQL could not be reached or dropped the connection."""


class TransientStoreError(TransientError):
    """Redis could not be reached or timed out."""


class ThrottledError(TransientError):
    """SNS throttled part of a page; what went out is recorded, the rest is retried."""


class OutOfTimeError(TransientError):
    """PublishBatch stopped taking pushes before Lambda's timeout: what went is
    recorded, the rest released; the ASL retries the page."""


class PublishRejectedError(PushflowError):
    """SNS refused a page's pushes for a reason no device has (credentials, authorization,
    a disabled platform application, KMS): the ASL retries it a little, then fails
    the page as an error. No device gets a row for it; what went out is recorded."""


class RetriesExhausted(PushflowError):
    """A page could not be completed; raised so the ASL's Catch records it."""
