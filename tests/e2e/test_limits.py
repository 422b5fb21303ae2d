"""What AWS enforces and moto does not, enforced by the local runtime: each
function's Timeout, a Map Run's tolerated failure, the 256 KiB payload limit
and the 25,000-event history limit, through the real ASL.

Each test lowers a limit for its own run (a shorter Timeout, a lower history
limit) through the same code path the deployed limit takes, and looks where an
operator would: the execution, its history, the notification and its rows.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import pytest

from pushflow.domain import sending
from pushflow.domain.models import PageRef
from pushflow.validation import validate
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import seed_users, varied_users
from pushflow_local.step_functions_limits import PAYLOAD_LIMIT_BYTES, payload_bytes
from tests.e2e.test_send import (
    SAMPLE_REQUEST,
    SEND_TIMEOUT_SECONDS,
    deliveries,
    send,
    sns_messages,
    unique_prefix,
)

pytestmark = pytest.mark.e2e

RESOLVE = "ResolveRecipientsFunction"


def error_named(name: str) -> type[Exception]:
    """An exception class with a name the ASL neither retries nor catches by name."""
    return type(name, (Exception,), {})


def map_run(runtime: LocalRuntime, execution_arn: str) -> dict[str, Any]:
    sfn = runtime.client("stepfunctions")
    [run] = sfn.list_map_runs(executionArn=execution_arn)["mapRuns"]
    described: dict[str, Any] = sfn.describe_map_run(mapRunArn=run["mapRunArn"])
    return described


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


# -- Lambda: each function's Timeout -------------------------------------------------------


class SlowResolve:
    """A page read that keeps working (short steps) far past any short Timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.steps = 0
        self.finished = False
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        give_up = time.monotonic() + self.seconds
        while time.monotonic() < give_up:
            with self.lock:
                self.steps += 1
            time.sleep(0.002)
        self.finished = True
        raise AssertionError("the page read ran to its end: nothing stopped it")


def test_a_function_that_overruns_its_timeout_fails_as_sandbox_timedout_and_stops(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-page send whose page read would take 5 s, and a 0.3 s Timeout
    devices = seed_users(clean_runtime, varied_users(3, prefix=unique_prefix()))
    slow = SlowResolve(5.0)
    monkeypatch.setattr(clean_runtime.services.repository, "resolve_page", slow)

    # WHEN the send runs
    with clean_runtime.function_timeouts({RESOLVE: 0.3}):
        notification, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the invocation failed as Lambda reports a timeout, by the name AWS gives it
    [timed_out] = clean_runtime.failures[RESOLVE]
    assert str(timed_out).endswith("Error: Task timed out after 0.30 seconds")
    # AND it is not a transient error: the Catch recorded the page failed, with that name
    assert execution["status"] == "SUCCEEDED"
    assert notification.status.value == "failed"
    rows = deliveries(clean_runtime, notification.id)
    assert set(rows) == {d.device_id for d in devices}
    for _, outcome, message_id, error in rows.values():
        assert (outcome, message_id) == ("failed", None)
        assert error.startswith("Sandbox.Timedout: RequestId: ")
        assert error.endswith("Error: Task timed out after 0.30 seconds")
    # AND the function stopped working at its deadline, long before its 5 s of work
    assert not slow.finished
    steps = slow.steps
    time.sleep(0.05)
    assert slow.steps == steps > 0


def test_a_publish_that_overruns_its_timeout_once_is_retried_by_its_timeout_name(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a send whose first PublishBatch hangs past a 2 s Timeout before it claims
    # or pushes anything (its first read), and later ones do not (2 s: a real
    # publish must fit in it on a busy machine)
    devices = seed_users(clean_runtime, varied_users(3, prefix=unique_prefix()))
    repository = clean_runtime.services.repository
    publish_batch = clean_runtime.functions["PublishBatchFunction"]
    read = repository.get_notification
    publish_reads: list[float] = []

    def hangs_once_in_publish_batch(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == publish_batch.name:
            publish_reads.append(time.monotonic())
            if len(publish_reads) == 1:
                SlowResolve(30.0)()
        return read(*args, **kwargs)

    monkeypatch.setattr(repository, "get_notification", hangs_once_in_publish_batch)

    # WHEN the send runs with PublishBatch's Timeout at 2 s
    with clean_runtime.function_timeouts({"PublishBatchFunction": 2.0}):
        notification, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the overrun was a timeout, and the ASL retried it by Sandbox.Timedout
    [timed_out] = clean_runtime.failures["PublishBatchFunction"]
    assert str(timed_out).endswith("Error: Task timed out after 2.00 seconds")
    assert len(publish_reads) == 2
    assert execution["status"] == "SUCCEEDED"
    assert notification.status.value == "completed"
    assert notification.counts == {"sent": len(devices)}


def test_the_sweep_reads_its_remaining_time_from_the_lambda_context(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN the sweep's Timeout shortened to the 30 s it keeps for its last batch
    with clean_runtime.function_timeouts({"DeviceSweepFunction": 30.0}):
        # WHEN it runs
        result = clean_runtime.invoke("DeviceSweepFunction", {})

    # THEN it takes no batch: its time is up by the context's clock, and says so
    assert result == {"removed": 0, "endpoints_deleted": 0, "endpoint_errors": 0, "finished": False}
    # AND with the template's Timeout it finishes (nothing to remove)
    assert clean_runtime.invoke("DeviceSweepFunction", {})["finished"] is True


# -- Step Functions: a Map Run's tolerated failure -----------------------------------------


def page_of(args: Any, kwargs: Any) -> PageRef:
    page: PageRef = next(a for a in [*args, *kwargs.values()] if isinstance(a, PageRef))
    return page


def pages_that_cannot_be_recorded(
    runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, failing_pages: set[int]
) -> None:
    """Those pages' reads fail for good, and so does recording them failed: their
    child executions fail, which is what the Map Run's tolerance counts."""
    repository = runtime.services.repository
    read, record = repository.resolve_page, repository.record_page_failure
    unreadable, unrecordable = error_named("PageUnreadable"), error_named("PageUnrecordable")

    def resolve_page(*args: Any, **kwargs: Any) -> Any:
        page = page_of(args, kwargs)
        if page.number in failing_pages:
            raise unreadable(f"page {page.number}")
        return read(*args, **kwargs)

    def record_page_failure(*args: Any, **kwargs: Any) -> Any:
        page = page_of(args, kwargs)
        if page.number in failing_pages:
            raise unrecordable(f"page {page.number}")
        return record(*args, **kwargs)

    monkeypatch.setattr(repository, "resolve_page", resolve_page)
    monkeypatch.setattr(repository, "record_page_failure", record_page_failure)


def small_pages(runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> int:
    settings = runtime.services.settings
    monkeypatch.setattr(runtime.services, "settings", dataclasses.replace(settings, page_size=10))
    return 10


def test_a_map_run_past_its_tolerated_failure_fails_the_send_and_aborts_its_children(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a three-page send whose page 1 can neither be read nor recorded failed,
    # while pages 0 and 2 are still being read when the Map Run fails
    page_size = small_pages(clean_runtime, monkeypatch)
    devices = seed_users(clean_runtime, varied_users(20, prefix=unique_prefix()))
    assert 2 * page_size < len(devices) <= 3 * page_size
    pages_that_cannot_be_recorded(clean_runtime, monkeypatch, {1})
    repository = clean_runtime.services.repository
    read = repository.resolve_page
    started: list[str] = []

    def read_after_the_map_run_failed(*args: Any, **kwargs: Any) -> Any:
        if page_of(args, kwargs).number != 1:
            assert wait_until(
                lambda: bool(started) and map_run(clean_runtime, started[0])["status"] == "FAILED"
            ), "the Map Run did not fail"
        return read(*args, **kwargs)

    monkeypatch.setattr(repository, "resolve_page", read_after_the_map_run_failed)

    # WHEN the send runs
    notification, created = sending.submit(
        validate("SendRequest", SAMPLE_REQUEST), repository, clean_runtime.services.workflow
    )
    assert created and notification.execution_arn
    started.append(notification.execution_arn)
    execution = clean_runtime.wait(notification.execution_arn, timeout=SEND_TIMEOUT_SECONDS)

    # THEN one failed child of three is over FanOut's 10%: the Map Run failed, and
    # aborted the two children still running (they stop at their next state)
    assert wait_until(
        lambda: map_run(clean_runtime, execution["executionArn"])["itemCounts"]["running"] == 0
    )
    run = map_run(clean_runtime, execution["executionArn"])
    assert run["status"] == "FAILED"
    assert run["toleratedFailurePercentage"] == 10.0
    assert (run["itemCounts"]["failed"], run["itemCounts"]["aborted"]) == (1, 2)
    # AND the Map state failed with the error AWS gives, caught into RecordSendFailure
    assert execution["status"] == "FAILED"
    assert execution["error"] == "SendFailed"
    history = clean_runtime.history(execution["executionArn"])
    [map_run_failed] = [e for e in history if e["type"] == "MapRunFailed"]
    assert map_run_failed["mapRunFailedEventDetails"]["error"] == (
        "States.ExceedToleratedFailureThreshold"
    )
    assert "RecordSendFailure" in clean_runtime.state_path(execution["executionArn"])
    finished = repository.get_notification(notification.id)
    assert finished.status.value == "failed"
    assert finished.error is not None
    assert finished.error.startswith("States.ExceedToleratedFailureThreshold: ")
    # AND the aborted pages pushed nothing and wrote nothing
    assert deliveries(clean_runtime, notification.id) == {}
    assert all(not messages for messages in sns_messages(d.endpoint_arn for d in devices).values())


def test_a_map_run_within_its_tolerated_failure_completes_the_send(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an eleven-page send whose page 4 can neither be read nor recorded failed
    page_size = small_pages(clean_runtime, monkeypatch)
    devices = seed_users(clean_runtime, varied_users(80, prefix=unique_prefix()))
    assert 10 * page_size < len(devices) <= 11 * page_size
    pages_that_cannot_be_recorded(clean_runtime, monkeypatch, {4})

    # WHEN the send runs
    notification, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN one failed child of eleven (9%) is within FanOut's 10%: the send completes
    run = map_run(clean_runtime, execution["executionArn"])
    assert (run["status"], run["itemCounts"]["failed"], run["itemCounts"]["total"]) == (
        "SUCCEEDED",
        1,
        11,
    )
    assert execution["status"] == "SUCCEEDED"
    # AND the page that could not be recorded has no rows (a reconciler's job), the rest do
    rows = deliveries(clean_runtime, notification.id)
    assert len(devices) - page_size <= len(rows) < len(devices)
    assert {row[0] for row in rows.values()} == set(range(11)) - {4}


# -- Step Functions: 256 KiB per state, 25,000 events per execution --------------------------


def test_an_oversize_task_result_fails_the_execution_with_data_limit_exceeded(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Prepare answering with a result just over 256 KiB
    seed_users(clean_runtime, varied_users(3, prefix=unique_prefix()))
    prepare = clean_runtime.functions["PrepareFunction"]
    original_invoke = prepare.invoke

    def oversize(event: Any) -> Any:
        return {**original_invoke(event), "padding": "x" * 262_144}

    monkeypatch.setattr(prepare, "invoke", oversize)

    # WHEN the send runs
    _, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the task failed with States.DataLimitExceeded, which States.ALL does not catch
    assert execution["status"] == "FAILED"
    assert execution["error"] == "States.DataLimitExceeded"
    path = clean_runtime.state_path(execution["executionArn"])
    assert path == ["Prepare"]
    [failed] = [
        e for e in clean_runtime.history(execution["executionArn"]) if e["type"] == "TaskFailed"
    ]
    assert failed["taskFailedEventDetails"]["error"] == "States.DataLimitExceeded"


@pytest.mark.parametrize("over_by", [1, 0])
def test_a_state_input_after_parameters_is_held_to_262144_bytes_exactly(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch, over_by: int
) -> None:
    # GIVEN a page whose ResolveRecipients answer makes FilterRecipients' input after
    # Parameters ({FunctionName, Payload}) 262,144 bytes plus `over_by`, while the
    # answer itself, as Step Functions wraps it, stays within the limit
    seed_users(clean_runtime, varied_users(3, prefix=unique_prefix()))
    resolve = clean_runtime.functions[RESOLVE]
    # The ASL invokes the function's alias (AutoPublishAlias), as deployed.
    filter_function = clean_runtime.functions["FilterRecipientsFunction"]
    filter_arn = f"{filter_function.arn}:{filter_function.spec.alias}"
    original_invoke = resolve.invoke
    sizes: dict[str, int] = {}

    def padded(event: Any) -> Any:
        page = {**original_invoke(event), "padding": ""}
        unpadded = payload_bytes({"FunctionName": filter_arn, "Payload": page})
        page["padding"] = "x" * (PAYLOAD_LIMIT_BYTES + over_by - unpadded)
        sizes["input"] = payload_bytes({"FunctionName": filter_arn, "Payload": page})
        sizes["result"] = payload_bytes(
            {"ExecutedVersion": "$LATEST", "Payload": page, "StatusCode": 200}
        )
        return page

    monkeypatch.setattr(resolve, "invoke", padded)
    invoked: list[str] = []
    for logical_id in ("FilterRecipientsFunction", "RecordPageFailureFunction"):
        function = clean_runtime.functions[logical_id]
        monkeypatch.setattr(
            function,
            "invoke",
            lambda event, _id=logical_id, _call=function.invoke: (
                invoked.append(_id) or _call(event)
            ),
        )

    # WHEN the send runs
    _, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the boundary is exact: 262,144 bytes pass to FilterRecipients, one more does not
    assert sizes == {"input": PAYLOAD_LIMIT_BYTES + over_by, "result": sizes["result"]}
    assert sizes["result"] <= PAYLOAD_LIMIT_BYTES
    if over_by:
        # AND over it, States.DataLimitExceeded passes the page's States.ALL Catch
        # (RecordPageFailure never runs): the child fails, and so the Map Run
        assert invoked == []
        assert map_run(clean_runtime, execution["executionArn"])["itemCounts"]["failed"] == 1
        assert execution["status"] == "FAILED"
    else:
        assert invoked[0] == "FilterRecipientsFunction"


def test_the_history_limit_fails_an_execution_as_aws_does(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a history limit of 9 events for this run (AWS: 25,000)
    seed_users(clean_runtime, varied_users(3, prefix=unique_prefix()))
    monkeypatch.setattr(clean_runtime, "history_event_limit", 9)

    # WHEN a send runs (its parent alone needs more than 9 events)
    _, execution = send(clean_runtime, SAMPLE_REQUEST)

    # THEN the execution failed with States.Runtime, the 9th event saying why, and no more
    cause = "The execution reached the maximum number of history events (9)."
    assert (execution["status"], execution["error"], execution["cause"]) == (
        "FAILED",
        "States.Runtime",
        cause,
    )
    history = clean_runtime.history(execution["executionArn"])
    assert [e["id"] for e in history] == list(range(1, 10))
    last = history[-1]
    assert last["type"] == "ExecutionFailed"
    assert last["executionFailedEventDetails"] == {"error": "States.Runtime", "cause": cause}
    assert json.dumps(history, default=str).count("ExecutionFailed") == 1
