"""RedriveExecution for moto's Step Functions interpreter (moto does not implement it).

The only module that reaches into moto's interpreter for redrive; the test
`tests/integration/test_local_redrive.py` fails loudly when moto changes.

What AWS does, and what this does the same way:
- Only a FAILED, TIMED_OUT or ABORTED execution that stopped within 14 days,
  redriven fewer than 1,000 times, can be redriven (else ExecutionNotRedrivable).
- The execution keeps its ARN, name, input and history; it is RUNNING again,
  an `ExecutionRedriven` event (with the redrive count) is appended, and it
  continues from the state that did not succeed, with the input that state had.
- A Distributed Map re-runs only the items whose child did not succeed; the
  ones that succeeded keep their output and are not run again.
One difference: a child that is re-run starts at its first state (AWS
re-enters it at its failed state). Pushflow's page tasks are safe to repeat.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
from collections.abc import Callable
from typing import Any

REDRIVABLE = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
REDRIVE_WINDOW = datetime.timedelta(days=14)
MAX_REDRIVES = 1000


def _item_key(item: Any) -> str:
    return json.dumps(item, sort_keys=True, default=str)


class LocalRedrive:
    """Installs RedriveExecution into moto while a local runtime runs."""

    def __init__(self, now: Callable[[], datetime.datetime]) -> None:
        self._now = now
        self._lock = threading.Lock()
        # execution ARN -> item of a Distributed Map -> the output of its child that succeeded
        self._succeeded: dict[str, dict[str, Any]] = {}
        self.redrive_counts: dict[str, int] = {}

    def install(self, stack: contextlib.ExitStack) -> None:
        from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
            distributed_iteration_component as distributed,
        )
        from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (  # noqa: E501
            distributed_item_processor_worker as worker,
        )
        from moto.stepfunctions.responses import StepFunctionResponse

        redrive = self

        def redrive_execution(response: Any) -> Any:
            from moto.core.responses import ActionResult

            arn = response._get_param("executionArn")
            redriven_at = redrive.redrive(response.stepfunction_backend, arn)
            return ActionResult({"redriveDate": redriven_at})

        setattr(StepFunctionResponse, "redrive_execution", redrive_execution)  # noqa: B010
        stack.callback(delattr, StepFunctionResponse, "redrive_execution")

        original_describe = StepFunctionResponse.describe_execution

        def describe_execution(response: Any) -> Any:
            """DescribeExecution with the redrive fields AWS adds (moto has none)."""
            answer = original_describe(response)
            described = answer.result
            if isinstance(described, dict):
                arn = described["executionArn"]
                execution = response.stepfunction_backend.describe_execution(arn)
                described["redriveCount"] = redrive.redrive_counts.get(arn, 0)
                reason = redrive.not_redrivable_because(execution)
                described["redriveStatus"] = "NOT_REDRIVABLE" if reason else "REDRIVABLE"
                if reason:
                    described["redriveStatusReason"] = reason
            return answer

        StepFunctionResponse.describe_execution = describe_execution  # type: ignore[method-assign,assignment]
        stack.callback(setattr, StepFunctionResponse, "describe_execution", original_describe)

        component = distributed.DistributedIterationComponent
        original_map_run = component._map_run

        def map_run(self: Any, env: Any, eval_input: Any) -> None:
            items: list[Any] = env.stack.pop()
            arn = _execution_arn(env)
            with redrive._lock:
                done = dict(redrive._succeeded.get(arn, {}))
            # Items whose child succeeded in an earlier attempt are not run again.
            kept = [item for item in items if _item_key(item) not in done]
            earlier = [done[_item_key(item)] for item in items if _item_key(item) in done]
            env.stack.append(kept)
            original_map_run(self, env, eval_input)
            outputs = env.stack.pop()
            env.stack.append([*earlier, *outputs])

        component._map_run = map_run  # type: ignore[method-assign]
        stack.callback(setattr, component, "_map_run", original_map_run)

        processor = worker.DistributedItemProcessorWorker
        original_eval_job = processor._eval_job

        def eval_job(self: Any, env: Any, job: Any) -> None:
            original_eval_job(self, env, job)
            if job.job_output is not None and not _ended_badly(env):
                with redrive._lock:
                    redrive._succeeded.setdefault(_execution_arn(env), {})[
                        _item_key(job.job_input)
                    ] = job.job_output

        processor._eval_job = eval_job  # type: ignore[method-assign]
        stack.callback(setattr, processor, "_eval_job", original_eval_job)

    def not_redrivable_because(self, execution: Any) -> str | None:
        """AWS's redriveStatusReason when the execution cannot be redriven, else None."""
        status = execution.status
        if status not in REDRIVABLE:
            return f"Execution is {status} and cannot be redriven."
        stopped = execution.stop_date
        if stopped is not None and stopped.tzinfo is None:
            stopped = stopped.replace(tzinfo=datetime.UTC)
        if stopped is not None and self._now() - stopped > REDRIVE_WINDOW:
            return "Execution redrivable period exceeded."
        if self.redrive_counts.get(execution.exec_arn, 0) >= MAX_REDRIVES:
            return "Execution has been redriven 1000 times."
        return None

    def redrive(self, backend: Any, execution_arn: str) -> datetime.datetime:
        """RedriveExecution: raises moto's ExecutionDoesNotExist or ExecutionNotRedrivable."""
        execution = backend.describe_execution(execution_arn)
        now = self._now()
        with self._lock:
            reason = self.not_redrivable_because(execution)
            if reason:
                raise not_redrivable(reason)
            count = self.redrive_counts.get(execution_arn, 0) + 1
            self.redrive_counts[execution_arn] = count
        _restart(execution, count, now)
        return now


def _execution_arn(env: Any) -> str:
    return str(env.states.context_object.context_object_data["Execution"]["Id"])


def _ended_badly(env: Any) -> bool:
    from moto.stepfunctions.parser.asl.eval.program_state import (
        ProgramError,
        ProgramStopped,
        ProgramTimedOut,
    )

    return isinstance(env.program_state(), ProgramError | ProgramStopped | ProgramTimedOut)


def not_redrivable(message: str) -> Exception:
    """The error AWS answers with (boto3 matches its code)."""
    from moto.core.exceptions import AWSError

    return AWSError(message, exception_type="ExecutionNotRedrivable", status=400)


def _resume_point(
    definition: dict[str, Any], history: list[dict[str, Any]], inpt: Any
) -> tuple[str, Any]:
    """The top-level state that did not succeed (entered, never exited) and its input."""
    top_level = set(definition["States"])
    entered: dict[str, Any] = {}
    last: str | None = None
    for event in history:
        details = event.get("stateEnteredEventDetails")
        if details and details["name"] in top_level:
            last = details["name"]
            entered[last] = json.loads(details.get("input") or "{}")
        exited = event.get("stateExitedEventDetails")
        if exited and exited["name"] == last:
            last = None
    if last is None:
        return str(definition["StartAt"]), inpt
    return last, entered[last]


def _restart(execution: Any, redrive_count: int, now: datetime.datetime) -> None:
    from moto.stepfunctions.parser.api import (
        ExecutionRedrivenEventDetails,
        ExecutionStatus,
        HistoryEventType,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_manager import EventHistoryContext
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    previous = execution.exec_worker
    history: list[dict[str, Any]] = previous.env.event_manager.get_event_history()
    definition = json.loads(execution.state_machine.definition)
    state, state_input = _resume_point(definition, history, execution.input_data)
    resumed = json.dumps({**definition, "StartAt": state})

    class RedrivenWorker(ExecutionWorker):
        def _get_evaluation_entrypoint(self) -> Any:
            return AmazonStateLanguageParser.parse(resumed)[0]

        def _execution_logic(self) -> None:
            program = self._get_evaluation_entrypoint()
            self.env = self._get_evaluation_environment()
            env: Any = self.env
            manager: Any = env.event_manager
            # The history goes on: same events, ids continuing after them.
            manager._history_event_list.extend(history)
            manager._event_id_gen._next_id = len(history) + 1
            env.event_history_context = EventHistoryContext(previous_event_id=len(history))
            details: Any = {
                "executionRedrivenEventDetails": ExecutionRedrivenEventDetails(
                    redriveCount=redrive_count
                )
            }
            manager.add_event(
                context=env.event_history_context,
                event_type=HistoryEventType.ExecutionRedriven,
                event_details=details,
            )
            self.env.states.reset(state_input)
            program.eval(self.env)
            self._execution_communication.terminated()

    worker = RedrivenWorker(
        evaluation_details=previous._evaluation_details,
        exec_comm=previous._execution_communication,
        cloud_watch_logging_session=previous._cloud_watch_logging_session,
        activity_store=previous._activity_store,
    )
    execution.exec_worker = worker
    execution.exec_status = ExecutionStatus.RUNNING
    execution.stop_date = None
    execution.error = None
    execution.cause = None
    execution.redrive_date = now
    worker.start()  # type: ignore[no-untyped-call]
