"""Every send ends: the reconciler, and resuming a send by redriving its execution.

A send's execution can end without Finalize: it failed with Finalize and the
failure recorder out of retries (a long database failover), timed out, was
stopped, or never started. The reconciler finds such sends (not final, older
than a grace period, their execution not RUNNING) and finalizes them from
their rows: every device of the plan gets one (`removed` for devices deleted
since the plan, `failed` for the ones the execution never reached), so the
counts add up to the recipients, and the execution's error is recorded.

A send whose execution FAILED, TIMED_OUT or was ABORTED can be resumed:
Step Functions' RedriveExecution re-runs only the unsuccessful states (and
only the unsuccessful children of a Distributed Map). The reconciler's rows
go first, so the pages that run again record what really happens; publish
claims and the deliveries primary key keep every push to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from pushflow.domain.errors import Conflict
from pushflow.domain.models import Notification, NotificationStatus
from pushflow.domain.sending import describe_error, execution_name, final_status, send_audience

# Step Functions' execution statuses.
RUNNING = "RUNNING"
REDRIVABLE = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
# Sends the API may resume: not final yet (an execution that died), or ended
# by the reconciler or by the execution's own failure path.
RESUMABLE = (
    NotificationStatus.ACCEPTED,
    NotificationStatus.RUNNING,
    NotificationStatus.FAILED,
    NotificationStatus.COMPLETED_WITH_FAILURES,
)
# The Error of the ASL's Fail state (SendFailed), reached after RecordSendFailure.
FAIL_STATE_ERROR = "SendFailed"


@dataclass(frozen=True, slots=True)
class ExecutionInfo:
    """What DescribeExecution says of a send's execution."""

    arn: str
    status: str
    stopped_at: datetime | None = None
    error: str | None = None
    cause: str | None = None
    # Why Step Functions would refuse to redrive it (redriveStatusReason), if it would.
    not_redrivable: str | None = None

    def describe(self) -> str:
        if not (self.error or self.cause):
            return f"execution {self.status}"
        # A task's cause is Lambda's error JSON: its message is what a reader needs.
        detail = describe_error({"Error": self.error or "Error", "Cause": self.cause or ""})
        return f"execution {self.status} ({detail})"


class Executions(Protocol):
    def arn_for(self, execution_name: str) -> str: ...

    def describe(self, execution_arn: str) -> ExecutionInfo | None:
        """None when no such execution exists (it never started)."""
        ...

    def redrive(self, execution_arn: str, client_token: str) -> None:
        """Raises Conflict when Step Functions says it cannot be redriven."""
        ...


class SendEndsRepository(Protocol):
    def get_notification(self, notification_id: str) -> Notification: ...
    def unfinished_sends(
        self, started_before: datetime, limit: int, after: Notification | None = None
    ) -> list[Notification]: ...
    def close_unfinished(
        self, notification_id: str, audience_spec: Mapping[str, Any], error: str
    ) -> dict[str, int] | None: ...
    def finish_unfinished(
        self, notification_id: str, status: NotificationStatus, error: str, execution_arn: str
    ) -> Notification | None: ...
    def resume(self, notification_id: str, resumable: tuple[NotificationStatus, ...]) -> bool: ...
    def forget_removed_devices(self, removed_before: datetime) -> int: ...
    def complete_schedule(self, schedule_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    # A send younger than this may still be starting (the API stores it, then starts it).
    grace: timedelta = timedelta(minutes=15)
    batch_size: int = 100
    # Per run; long-running sends (deferrals wait up to a day) never starve newer
    # dead ones: the run pages through all of them, oldest first.
    max_examined: int = 2000
    # Removed devices are remembered as long as a send planned before their removal
    # may still be finalized or redriven.
    keep_removed: timedelta = timedelta(days=30)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReconcilePolicy:
        from pushflow.config import ConfigurationError

        raw = env.get("RECONCILE_GRACE_MINUTES", "").strip() or "15"
        try:
            minutes = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"RECONCILE_GRACE_MINUTES must be a whole number, got {raw!r}"
            ) from None
        if not 1 <= minutes <= 1440:
            raise ConfigurationError(
                f"RECONCILE_GRACE_MINUTES must be between 1 and 1440, got {minutes}"
            )
        return cls(grace=timedelta(minutes=minutes))


@dataclass(slots=True)
class ReconcileSummary:
    examined: int = 0
    finalized: dict[str, str] = field(default_factory=dict)  # notification id -> status
    still_running: int = 0
    removed_forgotten: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "finalized": dict(self.finalized),
            "still_running": self.still_running,
            "removed_forgotten": self.removed_forgotten,
        }


def execution_arn(notification: Notification, executions: Executions) -> str:
    """The send's execution: the one Prepare recorded, else the one its name gives."""
    return notification.execution_arn or executions.arn_for(execution_name(notification.id))


def reconcile(
    repository: SendEndsRepository,
    executions: Executions,
    now: datetime,
    policy: ReconcilePolicy,
) -> ReconcileSummary:
    """Finalize the sends whose execution ended without finalizing them; never one
    whose execution is RUNNING."""
    summary = ReconcileSummary()
    last: Notification | None = None
    while summary.examined < policy.max_examined:
        batch = repository.unfinished_sends(now - policy.grace, policy.batch_size, last)
        if not batch:
            break
        for notification in batch:
            summary.examined += 1
            arn = execution_arn(notification, executions)
            execution = executions.describe(arn)
            if execution is not None and execution.status == RUNNING:
                summary.still_running += 1
                continue
            finished = finalize_ended(repository, notification, execution, arn)
            if finished is not None:
                summary.finalized[finished.id] = finished.status.value
        last = batch[-1]
    summary.removed_forgotten = repository.forget_removed_devices(now - policy.keep_removed)
    return summary


def finalize_ended(
    repository: SendEndsRepository,
    notification: Notification,
    execution: ExecutionInfo | None,
    arn: str,
) -> Notification | None:
    """Give a send whose execution ended its rows and its final status."""
    reason = "execution never started" if execution is None else execution.describe()
    # Rows of devices never reached say they were not sent, and why.
    counts = repository.close_unfinished(
        notification.id, send_audience(notification), f"not sent: {reason}"
    )
    if counts is None:  # finalized or resumed meanwhile
        return None
    # Devices never reached have `failed` rows: the usual rule then tells failed
    # from completed_with_failures; a send that planned nothing failed.
    status = final_status(notification, counts)
    if not counts and status is not NotificationStatus.CANCELLED:
        status = NotificationStatus.FAILED
    finished = repository.finish_unfinished(notification.id, status, reason, arn)
    if finished is not None and finished.schedule_id:
        repository.complete_schedule(finished.schedule_id)
    return finished


def redrive(
    notification_id: str,
    repository: SendEndsRepository,
    executions: Executions,
    now: datetime,
) -> Notification:
    """Resume a send whose execution failed, timed out or was aborted.

    Raises NotFound (no such send) or Conflict (nothing to resume: the send is
    cancelled or complete, its execution is running, succeeded, never started, or
    stopped more than 14 days ago)."""
    notification = repository.get_notification(notification_id)
    if notification.status not in RESUMABLE:
        raise Conflict(f"a {notification.status.value} send cannot be resumed")
    arn = execution_arn(notification, executions)
    execution = executions.describe(arn)
    if execution is None:
        raise Conflict("the send's execution never started: there is nothing to redrive")
    if execution.status not in REDRIVABLE:
        raise Conflict(
            f"the send's execution is {execution.status}: only a failed, timed out"
            " or aborted execution can be redriven"
        )
    if execution.error == FAIL_STATE_ERROR:
        # Its failure was caught and recorded; a redrive re-enters the Fail state.
        raise Conflict(
            f"the send failed and its failure was recorded ({notification.error});"
            " its execution ended in its Fail state, which a redrive would only re-enter"
        )
    if execution.not_redrivable:
        # Step Functions says why: over 14 days, too many redrives, history limit.
        raise Conflict(f"the send's execution cannot be redriven: {execution.not_redrivable}")
    # Rows and status first, so the pages that run again find nothing of the
    # reconciler's. Should the redrive below still be refused (a race), the send
    # stays running and the reconciler finalizes it again after its grace period.
    if not repository.resume(notification.id, RESUMABLE):
        raise Conflict("the send changed meanwhile; read it and try again")
    # Idempotent per resume: a retried request within this resume redrives once.
    executions.redrive(arn, client_token=f"redrive-{notification.id}-{now:%Y%m%d%H%M%S}")
    return repository.get_notification(notification.id)
