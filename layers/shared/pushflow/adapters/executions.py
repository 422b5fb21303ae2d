"""The SendNotification executions as the reconciler and a redrive see them (Step Functions)."""

from __future__ import annotations

from typing import Any

from pushflow.domain.errors import Conflict, TransientError
from pushflow.domain.send_ends import ExecutionInfo


class StepFunctionsExecutions:
    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self._client = client
        self.state_machine_arn = state_machine_arn

    def arn_for(self, execution_name: str) -> str:
        prefix = self.state_machine_arn.replace(":stateMachine:", ":execution:")
        return f"{prefix}:{execution_name}"

    def describe(self, execution_arn: str) -> ExecutionInfo | None:
        try:
            answer = self._client.describe_execution(executionArn=execution_arn)
        except self._client.exceptions.ExecutionDoesNotExist:
            return None
        except self._client.exceptions.ClientError as error:
            raise TransientError(f"cannot describe the send's execution: {error}") from error
        return ExecutionInfo(
            arn=execution_arn,
            status=str(answer["status"]),
            stopped_at=answer.get("stopDate"),
            error=answer.get("error"),
            cause=answer.get("cause"),
            not_redrivable=(
                str(answer.get("redriveStatusReason") or "not redrivable")
                if answer.get("redriveStatus") == "NOT_REDRIVABLE"
                else None
            ),
        )

    def redrive(self, execution_arn: str, client_token: str) -> None:
        try:
            self._client.redrive_execution(executionArn=execution_arn, clientToken=client_token)
        except (
            self._client.exceptions.ExecutionNotRedrivable,
            self._client.exceptions.ExecutionDoesNotExist,
        ) as error:
            raise Conflict(f"the send's execution cannot be redriven: {error}") from error
        except self._client.exceptions.ClientError as error:
            raise TransientError(f"cannot redrive the send's execution: {error}") from error
