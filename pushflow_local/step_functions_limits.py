"""Step Functions' limits, enforced on moto's interpreter as AWS enforces them.

moto runs the real ASL but is kinder than AWS in four ways this module
corrects (the only module that reaches into moto's interpreter for them;
tests/unit/test_step_functions_limits.py fails loudly if those internals move):

- **Payload size.** 256 KiB (262,144 bytes of the UTF-8 JSON) on a state's
  input after Parameters, a task's result and every state's output. moto
  measured JSON with spaces and \\u escapes, refused exactly 262,144 bytes and
  never checked the input. Over it the state fails with
  `States.DataLimitExceeded`, which `States.ALL` does not catch or retry.
- **History.** 25,000 events per execution (each Distributed Map child has its
  own history): event 25,000 is `ExecutionFailed`, `States.Runtime`, "The
  execution reached the maximum number of history events (25000).", nothing
  after it, and the execution stops. moto had no limit.
- **Map Run tolerated failure.** moto let a Distributed Map succeed whatever its
  children did; AWS fails the Map Run with `States.ExceedToleratedFailureThreshold`
  once the failed (or timed-out) children exceed `ToleratedFailureCount` or
  `ToleratedFailurePercentage` of all items (both 0 by default: one failed
  child fails it), starts no more children and aborts those running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from moto.stepfunctions.parser.api import (
    ExecutionFailedEventDetails,
    HistoryEventType,
    MapRunFailedEventDetails,
)
from moto.stepfunctions.parser.asl.component.common.error_name import error_equals_decl
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
    StatesErrorName,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state import state as state_module
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (
    distributed_item_processor_worker as map_worker,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task import (
    state_task,
    state_task_lambda,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager
from moto.stepfunctions.parser.backend import execution_worker

PAYLOAD_LIMIT_BYTES = 262_144
HISTORY_EVENT_LIMIT = 25_000

DATA_LIMIT_EXCEEDED = StatesErrorNameType.StatesStatesDataLimitExceeded.to_name()
EXCEED_TOLERATED = StatesErrorNameType.StatesExceedToleratedFailureThreshold.to_name()
STATES_ALL = StatesErrorNameType.StatesALL.to_name()
STATES_RUNTIME = StatesErrorNameType.StatesRuntime.to_name()


def readable_by_moto(definition: str) -> str:
    """The definition with an integer ToleratedFailurePercentage written as a float.

    AWS and statelint take `10`; moto's parser takes only `10.0`. The same
    number either way, so the ASL keeps the integer statelint requires.
    """

    def as_float(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: float(value)
                if key == "ToleratedFailurePercentage" and type(value) is int
                else as_float(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [as_float(item) for item in node]
        return node

    return json.dumps(as_float(json.loads(definition)), indent=2)


def payload_bytes(value: Any) -> int:
    """The size Step Functions counts: the value as compact JSON, in UTF-8 bytes."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return len(text.encode("utf-8"))


def is_within_payload_limit(value: Any) -> bool:
    return payload_bytes(value) <= PAYLOAD_LIMIT_BYTES


def history_limit_cause(limit: int) -> str:
    return f"The execution reached the maximum number of history events ({limit})."


def exceeds_tolerated_failure(
    failed: int, total: int, tolerated_count: int, tolerated_percentage: float
) -> bool:
    """Whether a Map Run with `failed` of `total` items failed is past its threshold.

    moto gives an absent threshold the value 0, as it gives an explicit 0: a
    non-zero threshold next to a 0 is read as the only one set.
    """
    if failed == 0:
        return False
    over_count = failed > tolerated_count
    over_percentage = failed * 100 > tolerated_percentage * total
    if tolerated_count and tolerated_percentage:
        return over_count or over_percentage
    if tolerated_percentage:
        return over_percentage
    return over_count


class LimitedEventManager(EventManager):
    """One execution's history, closed at its limit with the event AWS writes there."""

    def __init__(
        self,
        limit: int,
        on_limit: Callable[[ExecutionFailedEventDetails], None],
        cloud_watch_logging_session: Any = None,
    ) -> None:
        super().__init__(cloud_watch_logging_session=cloud_watch_logging_session)
        self.limit = limit
        self._on_limit = on_limit
        self._count = 0
        self._count_lock = threading.Lock()

    def add_event(
        self,
        context: Any,
        event_type: HistoryEventType,
        event_details: EventDetails | None = None,
        timestamp: Any = None,
        update_source_event_id: bool = True,
    ) -> int:
        with self._count_lock:
            if self._count >= self.limit:
                return self._count  # the history is closed: nothing is recorded after it
            self._count += 1
            if self._count < self.limit:
                return super().add_event(
                    context, event_type, event_details, timestamp, update_source_event_id
                )
            failure = ExecutionFailedEventDetails(
                error=STATES_RUNTIME, cause=history_limit_cause(self.limit)
            )
            event_id = super().add_event(
                context,
                HistoryEventType.ExecutionFailed,
                _event_details(executionFailedEventDetails=failure),
            )
        self._on_limit(failure)
        return event_id


def limit_history(env: Any, limit: int) -> None:
    """Give an execution's environment (a child's frame, for a Map child) its own
    history, closed at `limit`; the failure it records then is the execution's, for
    good: what the interrupted state does next cannot replace it."""
    set_error = env.set_error
    reached = threading.Event()

    def on_limit(failure: ExecutionFailedEventDetails) -> None:
        reached.set()
        set_error(failure)

    def set_error_unless_limited(error: ExecutionFailedEventDetails) -> None:
        if not reached.is_set():
            set_error(error)

    env.set_error = set_error_unless_limited
    env.event_manager = LimitedEventManager(limit, on_limit, env.cloud_watch_logging_session)


def _event_details(**details: Any) -> EventDetails:
    """moto's EventDetails TypedDict lists every kind of event; one is set at a time."""
    return cast(EventDetails, details)


def _exact_size_quota(value: Any) -> bool:
    return is_within_payload_limit(value)


def _replace(stack: contextlib.ExitStack, owner: Any, name: str, value: Any) -> None:
    original = vars(owner)[name]
    setattr(owner, name, value)
    stack.callback(setattr, owner, name, original)


def enforce(stack: contextlib.ExitStack, history_event_limit: Callable[[], int]) -> None:
    """Apply the limits until `stack` closes; `history_event_limit` is read per execution."""
    _enforce_payload_limit(stack)
    _enforce_history_limit(stack, history_event_limit)
    _enforce_tolerated_failure(stack, history_event_limit)
    _quiet_the_tolerance_warning(stack)


class _ToleranceEnforcedHere(logging.Filter):
    """Drops moto's warning that tolerated-failure declarations "have no effect":
    here they do (`_enforce_tolerated_failure`), so the warning would mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("ToleratedFailure" in message and "no effect" in message)


_PREPROCESSOR_LOGGER = "moto.stepfunctions.parser.asl.parse.preprocessor"


def _quiet_the_tolerance_warning(stack: contextlib.ExitStack) -> None:
    log = logging.getLogger(_PREPROCESSOR_LOGGER)
    quiet = _ToleranceEnforcedHere()
    log.addFilter(quiet)
    stack.callback(log.removeFilter, quiet)


def _enforce_payload_limit(stack: contextlib.ExitStack) -> None:
    for module in (state_module, state_task_service, state_task_lambda):
        _replace(stack, module, "is_within_size_quota", _exact_size_quota)

    task_class = state_task.StateTask
    original_parameters = vars(task_class)["_eval_parameters"]

    def eval_parameters(task: Any, env: Any) -> dict[str, Any]:
        # The state's effective input after Parameters counts too.
        parameters: dict[str, Any] = original_parameters(task, env)
        task._verify_size_quota(env=env, value=parameters)
        return parameters

    _replace(stack, task_class, "_eval_parameters", eval_parameters)

    matcher = error_equals_decl.ErrorEqualsDecl
    original_match = vars(matcher)["_eval_body"]

    def match(decl: Any, env: Any) -> None:
        # States.DataLimitExceeded is terminal: States.ALL neither retries nor catches
        # it; only a retrier or catcher that names it does.
        error_name = env.stack[-1]
        names = {name.error_name for name in decl.error_names}
        if getattr(error_name, "error_name", None) == DATA_LIMIT_EXCEEDED and (
            DATA_LIMIT_EXCEEDED not in names
        ):
            env.stack.pop()
            env.stack.append(False)
            return
        original_match(decl, env)

    _replace(stack, matcher, "_eval_body", match)


def _enforce_history_limit(
    stack: contextlib.ExitStack, history_event_limit: Callable[[], int]
) -> None:
    worker_class = execution_worker.ExecutionWorker
    original_environment = vars(worker_class)["_get_evaluation_environment"]

    def evaluation_environment(worker: Any) -> Any:
        env = original_environment(worker)
        limit_history(env, history_event_limit())
        return env

    _replace(stack, worker_class, "_get_evaluation_environment", evaluation_environment)


def child_histories(map_run_record: Any) -> list[list[Any]]:
    """The history of each child execution a Map Run finished, in the order they ended."""
    running = _RunningChildren.of(map_run_record)
    with running.lock:
        return list(running.histories)


class _RunningChildren:
    """The children of one Map Run under way: aborted when the Map Run fails."""

    _attach_lock = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.envs: set[Any] = set()
        self.map_run_failed = False
        # Each finished child's history (moto keeps a child's events in its frame
        # only): what `LocalRuntime.map_run_children` reads, as Step Functions lists
        # a Map Run's child executions.
        self.histories: list[list[Any]] = []

    @classmethod
    def of(cls, map_run_record: Any) -> _RunningChildren:
        with cls._attach_lock:
            running: _RunningChildren | None = getattr(map_run_record, "_pushflow_running", None)
            if running is None:
                running = cls()
                map_run_record._pushflow_running = running
            return running


def _enforce_tolerated_failure(
    stack: contextlib.ExitStack, history_event_limit: Callable[[], int]
) -> None:
    worker_class = map_worker.DistributedItemProcessorWorker
    original_job = vars(worker_class)["_eval_job"]

    def eval_job(worker: Any, env: Any, job: Any) -> None:
        record = worker._map_run_record
        running = _RunningChildren.of(record)
        with running.lock:
            if running.map_run_failed:
                return  # taken from the pool as the Map Run failed: never started
            running.envs.add(env)
        # A child execution: its own history, with its own limit.
        limit_history(env, history_event_limit())
        try:
            original_job(worker, env, job)
        finally:
            with running.lock:
                running.envs.discard(env)
                running.histories.append(env.event_manager.get_event_history())
        failed = record.item_counter.failed.get() + record.item_counter.timed_out.get()
        total = worker._job_pool._jobs_number
        if not exceeds_tolerated_failure(
            failed, total, record.tolerated_failure_count, record.tolerated_failure_percentage
        ):
            return
        cause = (
            f"{failed} of {total} items failed, over the tolerated"
            f" {record.tolerated_failure_count} items or"
            f" {record.tolerated_failure_percentage:g}%."
        )
        with running.lock:
            running.map_run_failed = True
            others = list(running.envs)
        # The children still running are aborted, as AWS aborts them: each stops at
        # its next state (a Lambda invocation under way still ends).
        for other in others:
            other.set_stop(stop_date=datetime.now(UTC), cause=cause, error=EXCEED_TOLERATED)
        # An exception as a job's output ends the pool: no further child starts.
        job.job_output = FailureEventException(
            failure_event=FailureEvent(
                env=env,
                error_name=StatesErrorName(
                    typ=StatesErrorNameType.StatesExceedToleratedFailureThreshold
                ),
                event_type=HistoryEventType.MapRunFailed,
                event_details=_event_details(
                    mapRunFailedEventDetails=MapRunFailedEventDetails(
                        error=EXCEED_TOLERATED, cause=cause
                    )
                ),
            )
        )

    _replace(stack, worker_class, "_eval_job", eval_job)
