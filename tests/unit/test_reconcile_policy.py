"""The reconciler's configuration, read once and refused with the variable's name."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pushflow.config import ConfigurationError
from pushflow.domain.send_ends import ExecutionInfo, ReconcilePolicy

pytestmark = pytest.mark.unit


def test_the_grace_period_defaults_to_15_minutes_and_reads_the_environment() -> None:
    assert ReconcilePolicy.from_env({}).grace == timedelta(minutes=15)
    assert ReconcilePolicy.from_env({"RECONCILE_GRACE_MINUTES": "30"}).grace == timedelta(
        minutes=30
    )


@pytest.mark.parametrize("raw", ["soon", "0", "1441", "-5"])
def test_a_bad_grace_period_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="RECONCILE_GRACE_MINUTES"):
        ReconcilePolicy.from_env({"RECONCILE_GRACE_MINUTES": raw})


def test_an_execution_describes_its_end_with_its_error() -> None:
    ended = ExecutionInfo("arn", "FAILED", error="States.TaskFailed", cause="database away")
    assert ended.describe() == "execution FAILED (States.TaskFailed: database away)"
    assert ExecutionInfo("arn", "ABORTED").describe() == "execution ABORTED"
