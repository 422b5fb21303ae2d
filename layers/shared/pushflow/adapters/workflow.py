"""Starting and stopping the SendNotification state machine."""

from __future__ import annotations

import json
from typing import Any

from pushflow.domain.errors import TransientError


class Workflow:
    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self._client = client
        self.state_machine_arn = state_machine_arn

    def start(self, execution_name: str, notification_id: str) -> str:
        """Start (or find) the execution for a notification; the name makes it idempotent."""
        try:
            response = self._client.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=execution_name,
                input=json.dumps({"notification_id": notification_id}),
            )
        except self._client.exceptions.ExecutionAlreadyExists:
            # The same name and input: a retry of a start that already happened.
            arn = self.state_machine_arn.replace(":stateMachine:", ":execution:")
            return f"{arn}:{execution_name}"
        except self._client.exceptions.ClientError as error:
            raise TransientError(f"cannot start the send: {error}") from error
        return str(response["executionArn"])
