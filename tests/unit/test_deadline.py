"""The invocation's deadline, as domain code that can stop early reads it."""

from __future__ import annotations

import math
import time

import pytest

from pushflow.deadline import NO_DEADLINE, Deadline
from pushflow_local.runtime import LambdaContext

pytestmark = pytest.mark.unit


def test_the_deadline_counts_down_with_the_lambda_context() -> None:
    context = LambdaContext("f", "arn:f", deadline=time.monotonic() + 300)
    deadline = Deadline.of(context)

    assert 299 < deadline.seconds_left() <= 300
    context.deadline = time.monotonic() - 1  # past it: none left, never negative
    assert deadline.seconds_left() == 0


def test_without_a_lambda_context_there_is_no_deadline() -> None:
    assert Deadline.of(None).seconds_left() == math.inf
    assert Deadline.of(object()).seconds_left() == math.inf
    assert NO_DEADLINE.seconds_left() == math.inf
