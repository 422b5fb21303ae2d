"""EventBridge Scheduler: timed sends start the SendNotification state machine.

Every schedule targets Step Functions' StartExecution through the universal
target, with a role whose only right is to start this state machine, a retry
policy and a dead-letter queue; flexible windows are off (a push at 09:00
means 09:00). A one-time schedule names the execution after its notification
(starting it twice is a no-op) and deletes itself once it has fired.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

START_EXECUTION = "arn:aws:scheduler:::aws-sdk:sfn:startExecution"


class Scheduler:
    def __init__(
        self,
        client: Any,
        group: str,
        role_arn: str,
        state_machine_arn: str,
        dead_letter_arn: str | None = None,
    ) -> None:
        self._client = client
        self.group = group
        self._role_arn = role_arn
        self._state_machine_arn = state_machine_arn
        self._dead_letter_arn = dead_letter_arn

    def _target(
        self, execution_input: Mapping[str, Any], execution_name: str | None
    ) -> dict[str, Any]:
        start: dict[str, Any] = {
            "StateMachineArn": self._state_machine_arn,
            "Input": json.dumps(execution_input),
        }
        if execution_name:
            start["Name"] = execution_name
        target: dict[str, Any] = {
            "Arn": START_EXECUTION,
            "RoleArn": self._role_arn,
            "Input": json.dumps(start),
            "RetryPolicy": {"MaximumRetryAttempts": 20, "MaximumEventAgeInSeconds": 3600},
        }
        if self._dead_letter_arn:
            target["DeadLetterConfig"] = {"Arn": self._dead_letter_arn}
        return target

    def once(
        self, name: str, at: datetime, execution_name: str, execution_input: Mapping[str, Any]
    ) -> None:
        """A schedule firing once at `at`, then deleted; re-creating it is a no-op."""
        self._create(
            Name=name,
            ScheduleExpression=f"at({at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')})",
            ScheduleExpressionTimezone="UTC",
            ActionAfterCompletion="DELETE",
            Target=self._target(execution_input, execution_name),
        )

    def recurring(
        self,
        name: str,
        cron_expression: str,
        time_zone: str,
        start_at: datetime,
        end_at: datetime | None,
        execution_input: Mapping[str, Any],
    ) -> None:
        """A cron schedule in an IANA zone; each firing starts an execution with its time."""
        extra: dict[str, Any] = {"StartDate": start_at}
        if end_at is not None:
            extra["EndDate"] = end_at
        self._create(
            Name=name,
            ScheduleExpression=cron_expression,
            ScheduleExpressionTimezone=time_zone,
            Target=self._target(execution_input, None),
            **extra,
        )

    def _create(self, **parameters: Any) -> None:
        try:
            self._client.create_schedule(
                GroupName=self.group,
                FlexibleTimeWindow={"Mode": "OFF"},
                State="ENABLED",
                **parameters,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ConflictException":
                raise

    def delete(self, name: str) -> None:
        """Delete a schedule; one already gone (fired and deleted) is fine."""
        try:
            self._client.delete_schedule(GroupName=self.group, Name=name)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
