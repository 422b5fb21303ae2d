"""The repository's part of "every send ends", against real PostgreSQL.

Which deleted devices a send planned (the audience matched on what the device
and its user were when deleted), and what the reconciler's rows become when a
send is resumed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pushflow.adapters.postgres import Repository
from pushflow.domain.models import DeliveryResult, NotificationStatus, Outcome
from pushflow.domain.send_ends import RESUMABLE, ExecutionInfo, ReconcilePolicy, reconcile
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeededDevice, seed_users
from tests.integration.test_repository import AUDIENCE, REQUEST, delivery_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def repository(clean_runtime: LocalRuntime) -> Repository:
    return clean_runtime.services.repository


@pytest.fixture
def devices(clean_runtime: LocalRuntime) -> list[SeededDevice]:
    return seed_users(clean_runtime, AUDIENCE)


def of(devices: list[SeededDevice], external_id: str) -> set[int]:
    return {d.device_id for d in devices if d.user_external_id == external_id}


def planned_send(repository: Repository, audience: dict[str, Any]) -> str:
    notification, _ = repository.create_notification(
        {**REQUEST, "audience": audience}, "news", NotificationStatus.RUNNING
    )
    repository.start_plan(notification.id)
    return notification.id


def user_id(repository: Repository, external_id: str) -> int:
    return int(repository.run("SELECT id FROM users WHERE external_id = :e", e=external_id)[0][0])


def test_only_devices_the_send_planned_and_that_were_deleted_since_get_removed_rows(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    # GIVEN a topic send: anna and ben subscribe, chiara does not; dmitri's device
    # is deleted before the plan
    for name in ("anna", "ben", "dmitri"):
        repository.subscribe(user_id(repository, name), "launches")
    [dmitri_ios, *_] = sorted(of(devices, "dmitri"))
    repository.delete_device(dmitri_ios)
    notification_id = planned_send(repository, {"type": "topic", "topic": "launches"})

    # WHEN, after the plan, anna is deleted with her devices, chiara too, and one of ben's
    repository.run("DELETE FROM users WHERE external_id IN ('anna', 'chiara')")
    [bens] = of(devices, "ben")
    repository.delete_device(bens)

    # THEN anna's devices and ben's are removed from the send (their topic went with them);
    # chiara was never in it, and dmitri's device went before the plan
    removed = repository.removed_since_plan(notification_id, {"type": "topic", "topic": "launches"})
    assert {r.device_id for r in removed} == of(devices, "anna") | {bens}
    assert {r.outcome for r in removed} == {Outcome.REMOVED}


def test_a_resumed_send_gets_back_its_deferrals_and_loses_the_reconcilers_other_rows(
    repository: Repository, devices: list[SeededDevice]
) -> None:
    # GIVEN a send with one device sent, one deferred by quiet hours, and the rest not reached
    notification_id = planned_send(repository, {"type": "all"})
    sent, deferred, *unreached = sorted(d.device_id for d in devices)
    owner = {row[0]: row[1] for row in repository.run("SELECT id, user_id FROM devices")}
    repository.record_deliveries(
        notification_id,
        0,
        [
            DeliveryResult(sent, owner[sent], Outcome.SENT, "message-1"),
            DeliveryResult(
                deferred, owner[deferred], Outcome.DEFERRED, deferred_until="2030-01-01T07:00:00Z"
            ),
        ],
    )

    # WHEN the reconciler closes it, every device has a row
    counts = repository.close_unfinished(notification_id, {"type": "all"}, "not sent: ABORTED")
    assert counts == {"sent": 1, "failed": 1 + len(unreached)}
    assert repository.close_unfinished(notification_id, {"type": "all"}, "again") is not None

    # AND WHEN it is resumed, the deferral waits again and the other reconciled rows are gone
    assert repository.resume(notification_id, RESUMABLE)
    rows = delivery_rows(repository, notification_id)
    assert {device: row[1] for device, row in rows.items()} == {
        sent: "sent",
        deferred: "deferred",
    }
    assert repository.get_notification(notification_id).status is NotificationStatus.RUNNING


class _Executions:
    """Step Functions as the reconciler sees it: these executions are RUNNING, no other exists."""

    def __init__(self, running: set[str]) -> None:
        self.running = running

    def arn_for(self, execution_name: str) -> str:
        return f"arn:aws:states:us-east-1:123456789012:execution:send:{execution_name}"

    def describe(self, execution_arn: str) -> ExecutionInfo | None:
        if execution_arn in self.running:
            return ExecutionInfo(execution_arn, "RUNNING")
        return None

    def redrive(self, execution_arn: str, client_token: str) -> None:
        raise AssertionError("the reconciler never redrives")


def test_sends_running_for_long_never_keep_the_reconciler_from_a_newer_dead_one(
    repository: Repository,
) -> None:
    # GIVEN more long-running sends (waiting for quiet hours) than one batch, and after
    # them a send whose execution never started
    running = []
    for _ in range(5):
        notification, _ = repository.create_notification(
            REQUEST, "news", NotificationStatus.RUNNING
        )
        repository.set_execution(notification.id, f"arn:running:{notification.id}")
        running.append(notification.id)
    dead, _ = repository.create_notification(REQUEST, "news", NotificationStatus.ACCEPTED)
    now = datetime.now(UTC) + timedelta(hours=1)

    # WHEN the reconciler runs with batches of two
    summary = reconcile(
        repository,
        _Executions({f"arn:running:{nid}" for nid in running}),
        now,
        ReconcilePolicy(batch_size=2),
    )

    # THEN it saw every send, left the running ones, and finalized the dead one
    assert (summary.examined, summary.still_running) == (6, 5)
    assert summary.finalized == {dead.id: "failed"}
    assert all(
        repository.get_notification(nid).status is NotificationStatus.RUNNING for nid in running
    )
