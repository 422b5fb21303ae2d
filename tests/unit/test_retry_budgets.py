"""The ASL's retry budgets against a PostgreSQL failover.

An RDS Multi-AZ failover takes 60-120 s, three minutes at worst. A state that
gives up on `TransientDatabaseError` before that leaves its send `accepted` or
`running` (Prepare, Finalize, RecordSendFailure) or its page without rows
(RecordResults, RecordPageFailure). The budget is read from the real ASL file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pushflow_local.runtime import REPO_ROOT

pytestmark = pytest.mark.unit

ASL = json.loads((REPO_ROOT / "statemachines" / "send_notification.asl.json").read_text())
FAILOVER_SECONDS = 180
STATES_THAT_MUST_OUTLAST_A_FAILOVER = (
    "Prepare",
    "Finalize",
    "RecordSendFailure",
    "RecordResults",
    "RecordPageFailure",
)


def _states(states: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, state in states.items():
        yield name, state
        if "ItemProcessor" in state:
            yield from _states(state["ItemProcessor"]["States"])


def _retrier_for(state: Mapping[str, Any], error: str) -> Mapping[str, Any]:
    """The retrier Step Functions applies to `error`: the first that names it."""
    for retrier in state.get("Retry", ()):
        if error in retrier["ErrorEquals"] or "States.ALL" in retrier["ErrorEquals"]:
            return retrier
    raise AssertionError(f"no retrier for {error}")


def retry_delays(retrier: Mapping[str, Any]) -> list[float]:
    """The longest wait before each retry, as Step Functions computes it:
    IntervalSeconds x BackoffRate^n, capped at MaxDelaySeconds."""
    interval = float(retrier.get("IntervalSeconds", 1))
    rate = float(retrier.get("BackoffRate", 2.0))
    cap = float(retrier.get("MaxDelaySeconds", float("inf")))
    return [min(interval * rate**attempt, cap) for attempt in range(retrier.get("MaxAttempts", 3))]


def expected_budget(retrier: Mapping[str, Any]) -> float:
    """Seconds the retries span on average: FULL jitter waits uniformly in [0, delay]."""
    delays = retry_delays(retrier)
    return sum(delays) / 2 if retrier.get("JitterStrategy") == "FULL" else sum(delays)


def test_retry_delays_follow_backoff_and_the_cap() -> None:
    retrier = {"IntervalSeconds": 2, "BackoffRate": 2.0, "MaxAttempts": 6, "MaxDelaySeconds": 20}
    assert retry_delays(retrier) == [2, 4, 8, 16, 20, 20]
    assert expected_budget({**retrier, "JitterStrategy": "FULL"}) == 35


@pytest.mark.parametrize("state_name", STATES_THAT_MUST_OUTLAST_A_FAILOVER)
def test_database_retries_outlast_a_three_minute_failover_even_with_jitter(
    state_name: str,
) -> None:
    # GIVEN the state in the real ASL
    [state] = [s for name, s in _states(ASL["States"]) if name == state_name]
    # WHEN PostgreSQL is away, every attempt raises TransientDatabaseError
    retrier = _retrier_for(state, "TransientDatabaseError")
    # THEN even the average of the jittered waits is longer than the failover
    assert expected_budget(retrier) >= FAILOVER_SECONDS, (state_name, retry_delays(retrier))
