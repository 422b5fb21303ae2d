"""RedriveExecution in local mode (pushflow_local/redrive.py), which moto lacks.

The first test fails loudly when moto changes what the local redrive relies
on; the others check AWS's rules through boto3, as the API's adapter calls it.
"""

from __future__ import annotations

import inspect
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pushflow.domain import sending
from pushflow.domain.errors import PushflowError
from pushflow.domain.models import NotificationStatus
from pushflow.validation import validate
from pushflow_local.redrive import LocalRedrive
from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime
from pushflow_local.seed import SeedUser, seed_users
from tests.conftest import load_event

pytestmark = pytest.mark.integration

WAIT_SECONDS = 60
REQUEST: dict[str, Any] = json.loads(load_event("api_send_notification.json")["body"])


def test_moto_still_has_what_the_local_redrive_relies_on() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.distributed_iteration_component import (  # noqa: E501
        DistributedIterationComponent,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor.distributed_item_processor_worker import (  # noqa: E501
        DistributedItemProcessorWorker,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
    from moto.stepfunctions.responses import StepFunctionResponse

    # If moto implements RedriveExecution itself, use it instead of pushflow_local/redrive.py.
    assert not hasattr(StepFunctionResponse, "redrive_execution") or (
        StepFunctionResponse.redrive_execution.__module__ == "pushflow_local.redrive"
    )
    assert list(inspect.signature(DistributedIterationComponent._map_run).parameters) == [
        "self",
        "env",
        "eval_input",
    ]
    assert list(inspect.signature(DistributedItemProcessorWorker._eval_job).parameters) == [
        "self",
        "env",
        "job",
    ]
    for name in ("_execution_logic", "_get_evaluation_entrypoint", "_get_evaluation_environment"):
        assert callable(getattr(ExecutionWorker, name)), name
    manager = EventManager()
    assert manager._history_event_list == [] and manager._event_id_gen._next_id == 1


def _send(runtime: LocalRuntime) -> tuple[str, str]:
    user = f"redrive-{uuid.uuid4().hex[:10]}"
    seed_users(runtime, [SeedUser(user, attributes={"first_name": "Ada"})])
    notification, _ = sending.submit(
        validate("SendRequest", REQUEST), runtime.services.repository, runtime.services.workflow
    )
    assert notification.execution_arn
    return notification.id, notification.execution_arn


def test_only_failed_timed_out_or_aborted_executions_within_14_days_are_redrivable(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sfn = clean_runtime.client("stepfunctions")
    _, arn = _send(clean_runtime)
    assert clean_runtime.wait(arn, timeout=WAIT_SECONDS)["status"] == "SUCCEEDED"

    # A succeeded execution, and one that does not exist, cannot be redriven
    with pytest.raises(sfn.exceptions.ExecutionNotRedrivable):
        sfn.redrive_execution(executionArn=arn)
    with pytest.raises(sfn.exceptions.ExecutionDoesNotExist):
        sfn.redrive_execution(executionArn=arn + "-nothing")

    # A running one cannot; once aborted it can, but not 15 days later
    prepare = sending.prepare
    release = threading.Event()
    entered = threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(WAIT_SECONDS)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(sending, "prepare", held)
    _, running = _send(clean_runtime)
    assert entered.wait(WAIT_SECONDS)
    with pytest.raises(sfn.exceptions.ExecutionNotRedrivable):
        sfn.redrive_execution(executionArn=running)
    sfn.stop_execution(executionArn=running)
    release.set()
    assert clean_runtime.wait(running, timeout=WAIT_SECONDS)["status"] == "ABORTED"

    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    # DescribeExecution says so, as AWS's redriveStatus does
    assert sfn.describe_execution(executionArn=running)["redriveStatus"] == "REDRIVABLE"
    succeeded = sfn.describe_execution(executionArn=arn)
    assert succeeded["redriveStatus"] == "NOT_REDRIVABLE"
    assert succeeded["redriveStatusReason"] == "Execution is SUCCEEDED and cannot be redriven."
    later = LocalRedrive(lambda: datetime.now(UTC) + timedelta(days=15))
    backend = stepfunctions_parser_backends[ACCOUNT][REGION]
    with pytest.raises(Exception, match="redrivable period exceeded"):
        later.redrive(backend, running)


def test_a_failed_execution_is_redriven_from_the_state_that_failed(
    clean_runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a send whose Finalize fails, and then its failure recorder too (no Catch after it)
    finalize = sending.finalize
    calls: list[bool] = []

    def failing_twice(event: Any, repository: Any) -> Any:
        calls.append(bool(event.get("error")))
        if len(calls) <= 2:
            raise PushflowError("the database is away")
        return finalize(event, repository)

    monkeypatch.setattr(sending, "finalize", failing_twice)
    notification_id, arn = _send(clean_runtime)
    failed = clean_runtime.wait(arn, timeout=WAIT_SECONDS)
    assert failed["status"] == "FAILED"
    repository = clean_runtime.services.repository
    assert repository.get_notification(notification_id).status is NotificationStatus.RUNNING
    entered_before = len(clean_runtime.state_path(arn))

    # WHEN it is redriven
    sfn = clean_runtime.client("stepfunctions")
    sfn.redrive_execution(executionArn=arn)
    ended = clean_runtime.wait(arn, timeout=WAIT_SECONDS)
    assert sfn.describe_execution(executionArn=arn)["redriveCount"] == 1

    # THEN only the state that failed ran again, with its input, and the execution went on
    assert clean_runtime.state_path(arn)[entered_before:] == ["RecordSendFailure", "SendFailed"]
    assert ended["status"] == "FAILED" and ended["executionArn"] == arn
    assert ended["error"] == "SendFailed"  # the Fail state's Error: the API refuses to redrive
    assert calls == [False, True, True]
    finished = repository.get_notification(notification_id)
    assert finished.status is NotificationStatus.FAILED
    assert finished.error is not None and "the database is away" in finished.error
