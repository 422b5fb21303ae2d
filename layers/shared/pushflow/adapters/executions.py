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


def _plain(value: Any) -> Any:
    """An SDK answer as JSON: times as ISO text."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class ExecutionReader:
    """A send's execution as the console shows it: DescribeExecution, its history,
    its Map Runs (ListMapRuns, DescribeMapRun) and their children
    (ListExecutions by mapRunArn), each child with its own history."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(**kwargs)
        except self._client.exceptions.ClientError as error:
            raise TransientError(f"cannot read the send's execution: {error}") from error

    def describe_execution(self, execution_arn: str) -> dict[str, Any] | None:
        try:
            answer = self._client.describe_execution(executionArn=execution_arn)
        except self._client.exceptions.ExecutionDoesNotExist:
            return None
        except self._client.exceptions.ClientError as error:
            raise TransientError(f"cannot describe the send's execution: {error}") from error
        keep = ("executionArn", "name", "status", "startDate", "stopDate", "error", "cause")
        described: dict[str, Any] = _plain({key: answer.get(key) for key in keep})
        return described

    def history(self, execution_arn: str, max_events: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while len(events) < max_events:
            page = self._call("get_execution_history", **kwargs)
            events.extend(_plain(page["events"]))
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        return events[:max_events]

    def map_runs(self, execution_arn: str) -> list[dict[str, Any]]:
        runs = []
        for item in self._call("list_map_runs", executionArn=execution_arn).get("mapRuns", []):
            described = self._call("describe_map_run", mapRunArn=item["mapRunArn"])
            runs.append(
                {
                    "map_run_arn": item["mapRunArn"],
                    "status": described.get("status"),
                    "start_date": _plain(described.get("startDate")),
                    "stop_date": _plain(described.get("stopDate")),
                    "item_counts": described.get("itemCounts", {}),
                    "execution_counts": described.get("executionCounts", {}),
                    "tolerated_failure_percentage": described.get("toleratedFailurePercentage"),
                }
            )
        return runs

    def map_run_children(
        self, map_run_arn: str, limit: int, next_token: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        kwargs: dict[str, Any] = {"mapRunArn": map_run_arn, "maxResults": limit}
        if next_token:
            kwargs["nextToken"] = next_token
        page = self._call("list_executions", **kwargs)
        # A child's ARN is the Map Run's, with `:execution:` and the child's name:
        # an answer that is not a child of this Map Run is not listed.
        prefix = map_run_arn.replace(":mapRun:", ":execution:", 1).rsplit(":", 1)[0] + ":"
        children = []
        for child in page.get("executions", []):
            if not str(child["executionArn"]).startswith(prefix):
                continue
            events = self.history(child["executionArn"], 200)
            children.append({**_plain(child), "events": events})
        return children, page.get("nextToken")
