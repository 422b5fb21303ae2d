"""The local runtime's Lambda sandbox: a handler stopped at its Timeout, wherever it is."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from pushflow_local.sandbox import SandboxTimedOut, run_until

pytestmark = pytest.mark.unit

# Upper bound for any wait below: a stopped worker ends well within it.
WAIT_SECONDS = 10.0


def test_a_call_within_its_timeout_returns_its_result_and_its_errors() -> None:
    assert run_until(lambda: {"sent": 3}, 5.0, "req-1") == {"sent": 3}
    assert run_until(lambda: None, 5.0, "req-2") is None

    def failing() -> None:
        raise KeyError("page_key")

    with pytest.raises(KeyError, match="page_key"):
        run_until(failing, 5.0, "req-3")


def test_an_overrun_is_reported_as_lambda_reports_it() -> None:
    release = threading.Event()

    with pytest.raises(SandboxTimedOut) as raised:
        run_until(lambda: release.wait(WAIT_SECONDS), 0.2, "3f9c-request")

    release.set()
    assert raised.value.error_type == "Sandbox.Timedout"
    assert str(raised.value) == "RequestId: 3f9c-request Error: Task timed out after 0.20 seconds"


def test_the_handler_stops_working_at_the_deadline_even_if_it_catches_exceptions() -> None:
    steps: list[int] = []
    ended = threading.Event()

    def stubborn_handler() -> None:
        try:
            while True:
                try:
                    steps.append(len(steps))
                    time.sleep(0.001)
                except Exception:
                    continue
        finally:
            ended.set()

    with pytest.raises(SandboxTimedOut):
        run_until(stubborn_handler, 0.2, "req-loop")

    assert ended.wait(WAIT_SECONDS), "the handler's thread was not stopped"
    done = len(steps)
    time.sleep(0.05)
    assert len(steps) == done, "the handler kept working after its deadline"
    assert done > 0


def test_a_handler_that_swallows_the_stop_once_is_stopped_again() -> None:
    stopped_twice = threading.Event()

    def handler_that_catches_everything() -> None:
        try:
            while True:
                time.sleep(0.001)
        except BaseException:
            pass
        try:
            while True:
                time.sleep(0.001)
        except BaseException:
            stopped_twice.set()
            raise

    with pytest.raises(SandboxTimedOut):
        run_until(handler_that_catches_everything, 0.1, "req-twice")

    assert stopped_twice.wait(WAIT_SECONDS)


def test_a_handler_blocked_in_one_call_is_answered_at_the_deadline_and_stopped_after() -> None:
    release = threading.Event()
    went_on = threading.Event()
    ended = threading.Event()

    def blocked_handler() -> None:
        try:
            release.wait(WAIT_SECONDS)  # one C-level wait: no bytecode runs until it returns
            went_on.set()
        finally:
            ended.set()

    with pytest.raises(SandboxTimedOut):
        run_until(blocked_handler, 0.1, "req-blocked")

    release.set()
    assert ended.wait(WAIT_SECONDS)
    assert not went_on.is_set(), "the handler went on after the blocking call returned"


def test_the_handler_runs_in_the_invokers_context() -> None:
    invocation: contextvars.ContextVar[str] = contextvars.ContextVar("invocation", default="none")
    invocation.set("PublishBatchFunction page 3")

    assert run_until(invocation.get, 5.0, "req-context") == "PublishBatchFunction page 3"
