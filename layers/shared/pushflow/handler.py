"""The one handler decorator every Lambda uses.

It adds what every task needs and none should repeat: the Lambda context and
correlation ids (notification, page, execution) on every log line, tracing,
metrics flushing, the function's adapters, built lazily once per process
and reused across invocations, and the invocation's deadline (`deadline()`).
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pushflow.deadline import NO_DEADLINE, Deadline
from pushflow.domain.errors import PushflowError
from pushflow.observability import logger, metrics, tracer
from pushflow.services import Services

Event = Mapping[str, Any]
Result = TypeVar("Result")

_lock = threading.Lock()
_services: Services | None = None
# Per invocation: Map iterations run functions on several threads at once locally.
_deadline: contextvars.ContextVar[Deadline] = contextvars.ContextVar(
    "pushflow_deadline", default=NO_DEADLINE
)


def current_services() -> Services:
    """The process's adapters, built on first use (never at import time)."""
    global _services
    if _services is None:
        with _lock:
            if _services is None:
                _services = Services.from_env()
    return _services


def replace_services(services: Services | None) -> Services | None:
    """Swap the process's adapters (the local runtime does, once per start); returns the old."""
    global _services
    with _lock:
        previous, _services = _services, services
    return previous


def deadline() -> Deadline:
    """The running invocation's deadline, from its Lambda context (none outside Lambda)."""
    return _deadline.get()


def correlation_ids(event: Event) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if not isinstance(event, Mapping):
        return keys
    if "notification_id" in event:
        keys["notification_id"] = event["notification_id"]
    page = event.get("page")
    if isinstance(page, Mapping) and "number" in page:
        keys["page"] = page["number"]
    if "execution_arn" in event:
        keys["execution"] = str(event["execution_arn"]).rsplit(":", 1)[-1]
    return keys


class TaskHandler:
    """A Lambda entry point, `(event, context)`; `.handle(event, services)` serves tests."""

    def __init__(self, handle: Callable[[Any, Services], Any]) -> None:
        self.handle = handle
        functools.update_wrapper(self, handle)
        self._entry = self._build_entry()

    def _build_entry(self) -> Callable[[Any, Any], Any]:
        handle = self.handle

        @metrics.log_metrics
        @tracer.capture_lambda_handler(capture_response=False)
        @logger.inject_lambda_context(clear_state=True)
        def entry(event: Any, context: Any) -> Any:
            # Per invocation, not process-wide: locally Map iterations invoke at once.
            logger.thread_safe_clear_keys()
            logger.thread_safe_append_keys(**correlation_ids(event))
            token = _deadline.set(Deadline.of(context))
            try:
                return handle(event, current_services())
            except PushflowError as error:
                # Named errors drive the ASL's Retry/Catch; log them without a trace.
                logger.warning(
                    "task failed", extra={"error_type": type(error).__name__, "error": str(error)}
                )
                raise
            finally:
                _deadline.reset(token)

        return entry

    def __call__(self, event: Any, context: Any) -> Any:
        return self._entry(event, context)


def task(handle: Callable[[Any, Services], Any]) -> TaskHandler:
    return TaskHandler(handle)
