"""`pushflow cost` counts state transitions from the ASL: here held to what the local
runtime records when it runs that ASL, so the model cannot drift from the definition.

Step Functions bills a Standard execution one transition per state it enters, and a
Distributed Map one per child execution it starts (the children, Standard, then
bill their own states). The histories say which states were entered.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from pushflow_local import cost
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import seed_users, varied_users
from tests.e2e.test_send import (
    SAMPLE_REQUEST,
    expected_page_size,
    send,
    unique_prefix,
    with_long_name,
)

pytestmark = pytest.mark.e2e


def states_entered(history: list[dict[str, Any]]) -> list[str]:
    return [
        event["stateEnteredEventDetails"]["name"]
        for event in history
        if "stateEnteredEventDetails" in event
    ]


def test_the_transitions_the_model_bills_are_those_a_real_send_enters(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN an audience that Prepare cuts into several pages (one heavy first name
    # shrinks the pages), and nothing that fails, retries or defers
    prefix = unique_prefix()
    seed_users(clean_runtime, with_long_name(varied_users(150, prefix=prefix), prefix))
    model = cost.read_stack().workflow

    # WHEN it is sent through the real state machine
    notification, execution = send(clean_runtime, {**SAMPLE_REQUEST, "audience": {"type": "all"}})
    assert execution["status"] == "SUCCEEDED"
    assert notification.page_count is not None and notification.page_count >= 3
    assert notification.recipient_count is not None

    # THEN the parent entered the states the model bills, in that order ...
    parent = states_entered(clean_runtime.history(execution["executionArn"]))
    assert parent == list(model.parent_states)
    # ... the Map started one child per page ...
    children = [
        states_entered(history)
        for history in clean_runtime.map_run_children(execution["executionArn"])
    ]
    assert len(children) == math.ceil(notification.page_count / model.pages_per_child)
    # ... and each child entered the states the model bills per child
    for child in children:
        assert child == list(model.child_states)

    # AND the bill for this audience counts those transitions: the parent's states,
    # one per child started, each child's own states
    entered = len(parent) + sum(1 + len(child) for child in children)
    bill = cost.bill(
        notification.recipient_count, "us-east-1", page_size=expected_page_size(clean_runtime)
    )
    assert bill.pages == notification.page_count
    assert bill.state_transitions == entered
