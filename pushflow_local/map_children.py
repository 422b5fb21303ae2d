"""A Distributed Map's child executions, listable as on AWS (moto keeps none).

On AWS each child of a Map Run is an execution of its own: ListExecutions with
`mapRunArn` lists them, and DescribeExecution and GetExecutionHistory answer
for each. moto's interpreter runs the children as frames of the parent and
drops them, and its ListExecutions ignores `mapRunArn`. While a local runtime
runs, this records each child as it runs (name, ARN in AWS's form, status,
start and stop, its own history) and answers those three calls for them, so
the console and any tool reads a send's pages as on AWS.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

# The children kept per runtime: enough for the sends a developer looks at.
MAX_CHILDREN_KEPT = 200_000


@dataclass
class MapChild:
    arn: str
    name: str
    map_run_arn: str
    state_machine_arn: str
    start: datetime.datetime
    env: Any = None
    stop: datetime.datetime | None = None
    status: str = "RUNNING"
    history: list[Any] = field(default_factory=list)

    def events(self) -> list[Any]:
        if self.env is not None:
            history: list[Any] = self.env.event_manager.get_event_history()
            return history
        return self.history

    def list_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "executionArn": self.arn,
            "name": self.name,
            "stateMachineArn": self.state_machine_arn,
            "mapRunArn": self.map_run_arn,
            "status": self.status,
            "startDate": self.start,
        }
        if self.stop is not None:
            item["stopDate"] = self.stop
        return item


def child_arn(map_run_arn: str, name: str) -> str:
    """`...:mapRun:<machine>/<label>:<id>` → `...:execution:<machine>/<label>:<name>`."""
    prefix = map_run_arn.replace(":mapRun:", ":execution:", 1).rsplit(":", 1)[0]
    return f"{prefix}:{name}"


class MapRunChildren:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_map_run: dict[str, list[MapChild]] = {}
        self._by_arn: dict[str, MapChild] = {}

    def children(self, map_run_arn: str) -> list[MapChild]:
        with self._lock:
            return list(self._by_map_run.get(map_run_arn, []))

    def child(self, arn: str) -> MapChild | None:
        with self._lock:
            return self._by_arn.get(arn)

    def _add(self, child: MapChild) -> None:
        with self._lock:
            if len(self._by_arn) >= MAX_CHILDREN_KEPT:
                oldest = next(iter(self._by_arn.values()))
                self._by_arn.pop(oldest.arn)
                self._by_map_run[oldest.map_run_arn].remove(oldest)
            self._by_arn[child.arn] = child
            self._by_map_run.setdefault(child.map_run_arn, []).append(child)

    def install(self, stack: contextlib.ExitStack) -> None:
        from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (  # noqa: E501
            distributed_item_processor_worker as worker,
        )
        from moto.stepfunctions.responses import StepFunctionResponse

        registry = self
        processor = worker.DistributedItemProcessorWorker
        original_eval_job = processor._eval_job

        def eval_job(self: Any, env: Any, job: Any) -> None:
            record = self._map_run_record
            name = str(uuid.uuid4())
            child = MapChild(
                arn=child_arn(record.map_run_arn, name),
                name=name,
                map_run_arn=record.map_run_arn,
                state_machine_arn=record.map_state_machine_arn,
                start=_now(),
                env=env,
            )
            registry._add(child)
            try:
                original_eval_job(self, env, job)
            finally:
                child.history = env.event_manager.get_event_history()
                child.status = _status(env)
                child.stop = _now()
                child.env = None

        processor._eval_job = eval_job  # type: ignore[method-assign]
        stack.callback(setattr, processor, "_eval_job", original_eval_job)

        original_list = StepFunctionResponse.list_executions
        original_history = StepFunctionResponse.get_execution_history
        original_describe = StepFunctionResponse.describe_execution

        def list_executions(response: Any) -> Any:
            from moto.core.responses import ActionResult

            map_run_arn = response._get_param("mapRunArn")
            if not map_run_arn:
                return original_list(response)
            children = registry.children(map_run_arn)
            status = response._get_param("statusFilter")
            if status:
                children = [c for c in children if c.status == status]
            start = int(response._get_param("nextToken") or 0)
            size = int(response._get_param("maxResults") or 100) or 100
            page = children[start : start + size]
            answer: dict[str, Any] = {"executions": [c.list_item() for c in page]}
            if start + size < len(children):
                answer["nextToken"] = str(start + size)
            return ActionResult(answer)

        def get_execution_history(response: Any) -> Any:
            from moto.core.responses import ActionResult

            found = registry.child(response._get_param("executionArn"))
            if found is None:
                return original_history(response)
            return ActionResult({"events": found.events()})

        def describe_execution(response: Any) -> Any:
            from moto.core.responses import ActionResult

            found = registry.child(response._get_param("executionArn"))
            if found is None:
                return original_describe(response)
            return ActionResult(found.list_item())

        for name, patched, original in (
            ("list_executions", list_executions, original_list),
            ("get_execution_history", get_execution_history, original_history),
            ("describe_execution", describe_execution, original_describe),
        ):
            setattr(StepFunctionResponse, name, patched)
            stack.callback(setattr, StepFunctionResponse, name, original)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _status(env: Any) -> str:
    from moto.stepfunctions.parser.asl.eval.program_state import (
        ProgramError,
        ProgramStopped,
        ProgramTimedOut,
    )

    state = env.program_state()
    if isinstance(state, ProgramError):
        return "FAILED"
    if isinstance(state, ProgramTimedOut):
        return "TIMED_OUT"
    if isinstance(state, ProgramStopped):
        return "ABORTED"
    return "SUCCEEDED"
