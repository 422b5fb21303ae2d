"""Every send ends, and a send that did not can be resumed.

Through the real ASL and the local runtime: a send whose execution is stopped
mid-send (StopExecution) is finalized by the reconciler (ReconcileSendsFunction)
with counts that add up; one that never started is finalized; one still running
is left alone; a device deleted after planning gets its own row; and an aborted
send redriven through the API completes, pushing only what had not gone.
ResolveRecipients is held at a gate so each test decides where the send stands.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from pushflow.domain import sending
from pushflow.domain.errors import TransientDatabaseError
from pushflow.domain.models import NotificationStatus, PageRef
from pushflow.validation import validate
from pushflow_local import cli
from pushflow_local.auth import LocalCredentials
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeededDevice, SeedUser, seed_users, varied_users
from pushflow_local.server import LocalApiServer
from tests.e2e.test_send import (
    SAMPLE_REQUEST,
    deliveries,
    sns_messages,
    unique_prefix,
    with_long_name,
)

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 60
# Past the reconciler's grace period (RECONCILE_GRACE_MINUTES in template.yaml).
PAST_GRACE = timedelta(minutes=16)


class GatedResolve:
    """Wraps Repository.resolve_page: pages not in `open_pages` wait until released."""

    def __init__(self, resolve_page: Callable[..., Any], open_pages: set[int]) -> None:
        self._resolve_page = resolve_page
        self._open_pages = open_pages
        self._lock = threading.Lock()
        self.released = threading.Event()
        self.held = threading.Event()
        self.calls: list[int] = []  # page numbers, in call order

    def __call__(self, audience: Any, page: PageRef, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls.append(page.number)
        if page.number not in self._open_pages:
            self.held.set()
            if not self.released.wait(WAIT_SECONDS):
                raise RuntimeError("the test never released the gate")
        return self._resolve_page(audience, page, *args, **kwargs)

    def calls_for(self, page: int) -> int:
        with self._lock:
            return self.calls.count(page)


@pytest.fixture
def gate(clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedResolve]:
    repository = clean_runtime.services.repository
    gated = GatedResolve(repository.resolve_page, open_pages={0})
    monkeypatch.setattr(repository, "resolve_page", gated)
    yield gated
    gated.released.set()  # never leave a child waiting for a test that failed


def audience(runtime: LocalRuntime, users: int = 120) -> list[SeededDevice]:
    """Users whose longest name makes Prepare cut several pages."""
    prefix = unique_prefix()
    return seed_users(runtime, with_long_name(varied_users(users, prefix=prefix), prefix))


def start_send(runtime: LocalRuntime) -> tuple[str, str]:
    notification, created = sending.submit(
        validate("SendRequest", SAMPLE_REQUEST),
        runtime.services.repository,
        runtime.services.workflow,
    )
    assert created and notification.execution_arn
    return notification.id, notification.execution_arn


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def succeeded_pages(runtime: LocalRuntime, execution_arn: str) -> int:
    sfn = runtime.client("stepfunctions")
    runs = sfn.list_map_runs(executionArn=execution_arn)["mapRuns"]
    if not runs:
        return 0
    counts = sfn.describe_map_run(mapRunArn=runs[0]["mapRunArn"])["itemCounts"]
    return int(counts["succeeded"])


def abort_after_first_page(runtime: LocalRuntime, gate: GatedResolve) -> tuple[str, str]:
    """A send stopped (StopExecution) once page 0 is done and the others wait at the gate."""
    notification_id, execution_arn = start_send(runtime)
    wait_for(lambda: gate.held.is_set(), "a page held at the gate")
    wait_for(lambda: succeeded_pages(runtime, execution_arn) >= 1, "page 0's child to succeed")
    runtime.client("stepfunctions").stop_execution(executionArn=execution_arn)
    gate.released.set()
    assert runtime.wait(execution_arn, timeout=WAIT_SECONDS)["status"] == "ABORTED"
    return notification_id, execution_arn


def outcomes(runtime: LocalRuntime, notification_id: str) -> dict[str, int]:
    counted: dict[str, int] = {}
    for _, outcome, _, _ in deliveries(runtime, notification_id).values():
        counted[outcome] = counted.get(outcome, 0) + 1
    return counted


def post(server: LocalApiServer, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{server.url}{path}", method="POST", headers={"x-api-key": server.api_key}
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


# -- the reconciler ---------------------------------------------------------------------


def test_an_aborted_send_is_finalized_by_the_reconciler_with_counts_adding_up(
    clean_runtime: LocalRuntime, gate: GatedResolve
) -> None:
    # GIVEN a send to several pages, stopped after its first page went out
    devices = audience(clean_runtime)
    notification_id, _ = abort_after_first_page(clean_runtime, gate)
    repository = clean_runtime.services.repository
    stopped = repository.get_notification(notification_id)
    assert stopped.status is NotificationStatus.RUNNING
    assert stopped.page_count is not None and stopped.page_count >= 2
    pushed = {
        d for d, row in deliveries(clean_runtime, notification_id).items() if row[1] == "sent"
    }
    assert 0 < len(pushed) < len(devices)

    # WHEN the reconciler runs past its grace period
    clean_runtime.clock.advance(PAST_GRACE)
    summary = clean_runtime.reconcile_sends()

    # THEN the send is final: what went out is sent, every other device failed, and why
    assert summary["finalized"] == {notification_id: "completed_with_failures"}
    finished = repository.get_notification(notification_id)
    assert finished.status is NotificationStatus.COMPLETED_WITH_FAILURES
    assert finished.error is not None and "ABORTED" in finished.error
    assert finished.counts == {"sent": len(pushed), "failed": len(devices) - len(pushed)}
    assert sum(finished.counts.values()) == finished.recipient_count == len(devices)
    rows = deliveries(clean_runtime, notification_id)
    assert set(rows) == {d.device_id for d in devices}
    assert {d for d, row in rows.items() if row[1] == "sent"} == pushed
    # AND a second run finds nothing more to do
    assert clean_runtime.reconcile_sends()["finalized"] == {}


def test_a_send_whose_execution_never_started_is_finalized(clean_runtime: LocalRuntime) -> None:
    # GIVEN a send stored by the API whose StartExecution never happened
    repository = clean_runtime.services.repository
    notification, _ = repository.create_notification(
        validate("SendRequest", SAMPLE_REQUEST), "social", NotificationStatus.ACCEPTED
    )

    # (created now by the runtime's clock, which earlier tests may have moved on)
    repository.run(
        "UPDATE notifications SET created_at = :now WHERE id = CAST(:id AS uuid)",
        now=clean_runtime.clock.now(),
        id=notification.id,
    )

    # WHEN the reconciler runs within the grace period, then after it
    assert clean_runtime.reconcile_sends()["finalized"] == {}
    assert repository.get_notification(notification.id).status is NotificationStatus.ACCEPTED
    clean_runtime.clock.advance(PAST_GRACE)
    summary = clean_runtime.reconcile_sends()

    # THEN the send failed, saying its execution never started, and counts add up (to 0)
    assert summary["finalized"] == {notification.id: "failed"}
    finished = repository.get_notification(notification.id)
    assert finished.status is NotificationStatus.FAILED
    assert finished.error == "execution never started"
    assert finished.recipient_count == 0 and finished.counts == {}


def test_a_send_still_running_is_left_alone(
    clean_runtime: LocalRuntime, gate: GatedResolve
) -> None:
    # GIVEN a send whose pages wait (its execution is RUNNING), older than the grace period
    devices = audience(clean_runtime, users=30)
    gate._open_pages.clear()
    notification_id, execution_arn = start_send(clean_runtime)
    wait_for(lambda: gate.held.is_set(), "a page held at the gate")
    clean_runtime.clock.advance(PAST_GRACE)

    # WHEN the reconciler runs
    summary = clean_runtime.reconcile_sends()

    # THEN it leaves the send alone
    assert summary["still_running"] == 1 and summary["finalized"] == {}
    repository = clean_runtime.services.repository
    assert repository.get_notification(notification_id).status is NotificationStatus.RUNNING
    assert deliveries(clean_runtime, notification_id) == {}
    # AND the send finishes on its own
    gate.released.set()
    assert clean_runtime.wait(execution_arn, timeout=WAIT_SECONDS)["status"] == "SUCCEEDED"
    finished = repository.get_notification(notification_id)
    assert finished.status is NotificationStatus.COMPLETED
    assert finished.counts == {"sent": len(devices)}


def test_a_send_whose_finalize_outlasted_its_retries_is_finalized_from_its_rows(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a send whose pages all went out, then PostgreSQL stayed away through
    # Finalize's retries and RecordSendFailure's: the execution FAILED, the send is running
    devices = audience(clean_runtime, users=30)

    def database_away(event: Any, repository: Any) -> Any:
        raise TransientDatabaseError("PostgreSQL: connection refused")

    monkeypatch.setattr(sending, "finalize", database_away)
    notification_id, execution_arn = start_send(clean_runtime)
    assert clean_runtime.wait(execution_arn, timeout=WAIT_SECONDS)["status"] == "FAILED"
    monkeypatch.undo()
    repository = clean_runtime.services.repository
    assert repository.get_notification(notification_id).status is NotificationStatus.RUNNING

    # WHEN the reconciler runs past its grace period
    clean_runtime.clock.advance(PAST_GRACE)
    clean_runtime.reconcile_sends()

    # THEN the send is completed from its rows, and the execution's failure is recorded
    finished = repository.get_notification(notification_id)
    assert finished.status is NotificationStatus.COMPLETED
    assert finished.counts == {"sent": len(devices)} == {"sent": finished.recipient_count}
    assert finished.error == (
        "execution FAILED (TransientDatabaseError: PostgreSQL: connection refused)"
    )


def test_a_cancelled_send_whose_execution_died_ends_cancelled_with_every_device_counted(
    clean_runtime: LocalRuntime, gate: GatedResolve
) -> None:
    # GIVEN a send cancelled while its pages wait, whose execution is then stopped
    devices = audience(clean_runtime, users=30)
    gate._open_pages.clear()
    notification_id, execution_arn = start_send(clean_runtime)
    wait_for(lambda: gate.held.is_set(), "a page held at the gate")
    repository = clean_runtime.services.repository
    assert repository.cancel_notification(notification_id) is not None
    clean_runtime.client("stepfunctions").stop_execution(executionArn=execution_arn)
    gate.released.set()
    assert clean_runtime.wait(execution_arn, timeout=WAIT_SECONDS)["status"] == "ABORTED"

    # WHEN the reconciler runs past its grace period
    clean_runtime.clock.advance(PAST_GRACE)
    summary = clean_runtime.reconcile_sends()

    # THEN the send stays cancelled, now finished, every device counted as cancelled
    assert summary["finalized"] == {notification_id: "cancelled"}
    finished = repository.get_notification(notification_id)
    assert finished.status is NotificationStatus.CANCELLED and finished.completed_at
    assert finished.counts == {"cancelled": len(devices)}
    assert finished.recipient_count == len(devices)
    assert sns_messages(d.endpoint_arn for d in devices) == {d.endpoint_arn: {} for d in devices}


# -- devices removed after planning -----------------------------------------------------


def test_a_device_deleted_after_planning_gets_a_removed_row(
    clean_runtime: LocalRuntime, gate: GatedResolve
) -> None:
    # GIVEN a send planned and waiting for its pages
    devices = audience(clean_runtime, users=30)
    gate._open_pages.clear()
    notification_id, execution_arn = start_send(clean_runtime)
    wait_for(lambda: gate.held.is_set(), "a page held at the gate")
    repository = clean_runtime.services.repository

    # WHEN one device is deleted, and another user with all their devices
    deleted_device = devices[0]
    repository.delete_device(deleted_device.device_id)
    gone_user = devices[-1].user_external_id
    repository.run("DELETE FROM users WHERE external_id = :ext", ext=gone_user)
    removed = {deleted_device.device_id} | {
        d.device_id for d in devices if d.user_external_id == gone_user
    }
    gate.released.set()
    assert clean_runtime.wait(execution_arn, timeout=WAIT_SECONDS)["status"] == "SUCCEEDED"

    # THEN each removed device has a row that says so and was not pushed; the counts add up
    finished = repository.get_notification(notification_id)
    assert finished.counts == {"sent": len(devices) - len(removed), "removed": len(removed)}
    assert sum(finished.counts.values()) == finished.recipient_count == len(devices)
    assert finished.status is NotificationStatus.COMPLETED
    rows = deliveries(clean_runtime, notification_id)
    assert {d for d, row in rows.items() if row[1] == "removed"} == removed
    recorded = sns_messages(d.endpoint_arn for d in devices if d.device_id in removed)
    assert all(messages == {} for messages in recorded.values())


def test_a_failed_page_gives_its_removed_devices_removed_rows(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a page whose ResolveRecipients fails for good after a device of it was deleted
    devices = audience(clean_runtime, users=30)
    repository = clean_runtime.services.repository
    resolve_page = repository.resolve_page
    deleted = devices[0]

    def delete_then_fail(audience_spec: Any, page: PageRef, *args: Any, **kwargs: Any) -> Any:
        if page.first_device_id <= deleted.device_id <= page.last_device_id:
            repository.delete_device(deleted.device_id)
            raise ValueError("a page that can never be read")
        return resolve_page(audience_spec, page, *args, **kwargs)

    monkeypatch.setattr(repository, "resolve_page", delete_then_fail)

    # WHEN the send runs
    notification_id, execution_arn = start_send(clean_runtime)
    assert clean_runtime.wait(execution_arn, timeout=WAIT_SECONDS)["status"] == "SUCCEEDED"

    # THEN RecordPageFailure wrote `removed` for the deleted device, `failed` for the page's others
    rows = deliveries(clean_runtime, notification_id)
    assert rows[deleted.device_id][1] == "removed"
    finished = repository.get_notification(notification_id)
    assert sum(finished.counts.values()) == finished.recipient_count == len(devices)
    assert finished.counts["removed"] == 1 and finished.counts["failed"] > 0


# -- resume: redrive ---------------------------------------------------------------------


def test_an_aborted_send_redriven_through_the_api_pushes_only_what_had_not_gone(
    clean_runtime: LocalRuntime, gate: GatedResolve, api: LocalApiServer
) -> None:
    # GIVEN a send stopped after its first page, finalized by the reconciler
    devices = audience(clean_runtime)
    notification_id, execution_arn = abort_after_first_page(clean_runtime, gate)
    pushed_before = {
        arn: len(messages)
        for arn, messages in sns_messages(d.endpoint_arn for d in devices).items()
    }
    assert 0 < sum(pushed_before.values()) < len(devices)
    clean_runtime.clock.advance(PAST_GRACE)
    clean_runtime.reconcile_sends()
    repository = clean_runtime.services.repository
    assert repository.get_notification(notification_id).status is (
        NotificationStatus.COMPLETED_WITH_FAILURES
    )
    first_page_reads = gate.calls_for(0)

    # WHEN a backend redrives it through the API
    status, body = post(api, f"/v1/notifications/{notification_id}/redrive")

    # THEN the send is running again, and then completes
    assert status == 202, body
    assert body["status"] == "running"
    assert clean_runtime.wait(execution_arn, timeout=WAIT_SECONDS)["status"] == "SUCCEEDED"
    finished = repository.get_notification(notification_id)
    assert finished.status is NotificationStatus.COMPLETED
    assert finished.counts == {"sent": len(devices)} and finished.error is None
    # AND every device got exactly one push: the redrive pushed only the ones not pushed
    recorded = sns_messages(d.endpoint_arn for d in devices)
    assert {arn: len(messages) for arn, messages in recorded.items()} == {
        d.endpoint_arn: 1 for d in devices
    }
    # AND the page that had succeeded was not run again; the execution kept its ARN and history
    assert gate.calls_for(0) == first_page_reads
    history = clean_runtime.history(execution_arn)
    types = [event["type"] for event in history]
    assert types.count("ExecutionStarted") == 1 and types.count("ExecutionRedriven") == 1
    assert types.index("ExecutionAborted") < types.index("ExecutionRedriven")
    assert [e["id"] for e in history] == list(range(1, len(history) + 1))
    resumed = types.index("ExecutionRedriven")
    entered = [
        e["stateEnteredEventDetails"]["name"]
        for e in history[resumed:]
        if "stateEnteredEventDetails" in e
    ]
    assert entered[0] == "FanOut" and "Prepare" not in entered

    # AND a succeeded execution cannot be redriven again; an unknown send is 404
    status, body = post(api, f"/v1/notifications/{notification_id}/redrive")
    assert status == 409 and body["error"] == "conflict", body
    status, body = post(api, f"/v1/notifications/{uuid.uuid4()}/redrive")
    assert status == 404, body


def test_a_send_whose_failure_was_recorded_is_refused_a_redrive_saying_why(
    clean_runtime: LocalRuntime,
    api: LocalApiServer,
    credentials: LocalCredentials,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a send Prepare refused (a placeholder no attribute fills): caught, recorded, failed
    seed_users(clean_runtime, [SeedUser(f"{unique_prefix()}-nameless", devices=[("ios", False)])])
    notification_id, execution_arn = start_send(clean_runtime)
    ended = clean_runtime.wait(execution_arn, timeout=WAIT_SECONDS)
    assert (ended["status"], ended["error"]) == ("FAILED", "SendFailed")

    # WHEN a backend asks to redrive it
    status, body = post(api, f"/v1/notifications/{notification_id}/redrive")

    # THEN it is refused, naming the recorded failure; the send stays failed
    assert status == 409, body
    assert "first_name" in body["message"]
    finished = clean_runtime.services.repository.get_notification(notification_id)
    assert finished.status is NotificationStatus.FAILED
    # AND `pushflow local redrive` says the same and exits non-zero
    monkeypatch.setattr("pushflow_local.auth.load_credentials", lambda: credentials)
    assert cli.main(["local", "redrive", notification_id, "--url", api.url]) == 1
    assert "first_name" in json.loads(capsys.readouterr().err)["message"]
