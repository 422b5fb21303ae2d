"""The Step Functions limits the local runtime puts on moto's interpreter.

The first test fails loudly when moto moves or renames what the limits patch:
the e2e tests would otherwise pass against an interpreter that enforces nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from typing import Any

import pytest
from moto.stepfunctions.parser.api import HistoryEventType
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventHistoryContext
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

from pushflow_local import step_functions_limits as limits
from pushflow_local.runtime import REPO_ROOT

pytestmark = pytest.mark.unit


def test_every_moto_internal_the_limits_replace_is_where_they_expect_it() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_map import iteration
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
        iteration_worker,
        job,
    )

    itemprocessor = importlib.import_module(f"{iteration.__name__}.itemprocessor")
    map_worker = importlib.import_module(
        f"{itemprocessor.__name__}.distributed_item_processor_worker"
    )
    map_run_record = importlib.import_module(f"{itemprocessor.__name__}.map_run_record")

    worker = map_worker.DistributedItemProcessorWorker
    before = vars(worker)["_eval_job"]  # moto's, or a running runtime's
    with contextlib.ExitStack() as stack:
        limits.enforce(stack, lambda: 25_000)  # KeyError if a replaced attribute moved
        assert vars(worker)["_eval_job"] is not before
        assert vars(worker)["_eval_job"].__module__ == limits.__name__
    assert vars(worker)["_eval_job"] is before  # put back

    # What the tolerance check reads on a Map Run's worker, its job pool and record.
    assert "_map_run_record" in vars(worker)["__init__"].__code__.co_names
    assert "_job_pool" in vars(iteration_worker.IterationWorker)["__init__"].__code__.co_names
    assert "_jobs_number" in vars(job.JobPool)["__init__"].__code__.co_names
    counter = map_run_record.ItemCounter()
    assert counter.failed.get() == counter.timed_out.get() == 0


def test_the_payload_limit_is_262144_bytes_of_compact_utf8_json() -> None:
    # {"k":"..."} is 8 bytes around the value
    at_limit = {"k": "x" * (262_144 - 8)}
    assert limits.payload_bytes(at_limit) == 262_144
    assert limits.is_within_payload_limit(at_limit)
    assert not limits.is_within_payload_limit({"k": "x" * (262_144 - 7)})
    # Non-ASCII counts its UTF-8 bytes (2 for Ü), not a \\u escape (6), and no spaces.
    assert limits.payload_bytes({"name": "Ü", "n": [1, 2]}) == len(
        '{"name":"Ü","n":[1,2]}'.encode()
    )


@pytest.mark.parametrize(
    ("failed", "total", "count", "percentage", "exceeded"),
    [
        (0, 10, 0, 0.0, False),  # nothing failed
        (1, 1000, 0, 0.0, True),  # the default: one failed child fails the Map Run
        (1, 10, 0, 10.0, False),  # 10% is tolerated...
        (2, 11, 0, 10.0, True),  # ...18% is not
        (1, 11, 0, 10.0, False),
        (3, 10, 3, 0.0, False),  # a count alone
        (4, 10, 3, 0.0, True),
        (4, 100, 3, 10.0, True),  # both set: exceeding either fails it
        (11, 100, 20, 10.0, True),
        (3, 100, 3, 10.0, False),
    ],
)
def test_the_tolerated_failure_threshold(
    failed: int, total: int, count: int, percentage: float, exceeded: bool
) -> None:
    assert limits.exceeds_tolerated_failure(failed, total, count, percentage) is exceeded


def test_a_history_closes_at_its_limit_with_the_failure_aws_records() -> None:
    reached: list[Any] = []
    manager = limits.LimitedEventManager(3, reached.append)
    context = EventHistoryContext.of_program_start()

    for _ in range(5):
        manager.add_event(context, HistoryEventType.PassStateEntered)

    history = manager.get_event_history()
    assert [event["id"] for event in history] == [1, 2, 3]
    assert [event["type"] for event in history] == [
        HistoryEventType.PassStateEntered,
        HistoryEventType.PassStateEntered,
        HistoryEventType.ExecutionFailed,
    ]
    failure = {
        "error": "States.Runtime",
        "cause": "The execution reached the maximum number of history events (3).",
    }
    assert history[-1]["executionFailedEventDetails"] == failure
    assert reached == [failure]


def test_the_asl_keeps_an_integer_percentage_that_moto_reads_as_a_float() -> None:
    definition = (REPO_ROOT / "statemachines" / "send_notification.asl.json").read_text()
    fan_out = json.loads(definition)["States"]["FanOut"]
    assert type(fan_out["ToleratedFailurePercentage"]) is int  # statelint's type

    readable = limits.readable_by_moto(definition)

    assert json.loads(readable)["States"]["FanOut"]["ToleratedFailurePercentage"] == 10.0
    AmazonStateLanguageParser.parse(readable)
    assert json.loads(readable) == json.loads(definition)  # the same numbers


def test_moto_warning_that_tolerated_failure_has_no_effect_is_not_shown_where_it_has(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from moto.stepfunctions.parser.asl.parse import preprocessor

    definition = json.dumps(
        {
            "StartAt": "Pages",
            "States": {
                "Pages": {
                    "Type": "Map",
                    "ToleratedFailurePercentage": 10.0,
                    "ItemProcessor": {
                        "ProcessorConfig": {"Mode": "INLINE"},
                        "StartAt": "Page",
                        "States": {"Page": {"Type": "Pass", "End": True}},
                    },
                    "End": True,
                }
            },
        }
    )
    # moto's parser warns from this logger (this fails loudly if it moves); a running
    # local runtime (the session's) has its filter on it already: set aside for this.
    assert preprocessor.LOG.name == limits._PREPROCESSOR_LOGGER
    filters = list(preprocessor.LOG.filters)
    for installed in filters:
        preprocessor.LOG.removeFilter(installed)
    try:
        with caplog.at_level("WARNING", logger=preprocessor.LOG.name):
            AmazonStateLanguageParser.parse(definition)
        assert any("no effect" in r.getMessage() for r in caplog.records)
        caplog.clear()

        with (
            contextlib.ExitStack() as stack,
            caplog.at_level("WARNING", logger=preprocessor.LOG.name),
        ):
            limits._quiet_the_tolerance_warning(stack)
            AmazonStateLanguageParser.parse(definition)
        assert not any("no effect" in r.getMessage() for r in caplog.records)
    finally:
        for installed in filters:
            preprocessor.LOG.addFilter(installed)
