"""template.yaml: the reconciler is scheduled with the IAM it needs; redrive is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfn_tools import load_yaml

pytestmark = pytest.mark.integration

TEMPLATE = load_yaml((Path(__file__).resolve().parents[2] / "template.yaml").read_text())
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]


def _statements(resource: str) -> list[dict[str, Any]]:
    policies = RESOURCES[resource]["Properties"]["Policies"]
    return [s for p in policies if isinstance(p, dict) for s in p.get("Statement", [])]


def _actions_on(resource: str, action: str) -> list[Any]:
    return [s["Resource"] for s in _statements(resource) if action in s["Action"]]


def test_the_reconciler_runs_on_a_schedule_with_the_state_machine_it_asks_about() -> None:
    function = RESOURCES["ReconcileSendsFunction"]["Properties"]
    assert function["CodeUri"] == "functions/reconcile_sends/"
    [event] = function["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"].startswith("rate(")
    variables = function["Environment"]["Variables"]
    assert variables["STATE_MACHINE_ARN"] == {"Ref": "SendNotificationStateMachine"}
    assert 1 <= int(variables["RECONCILE_GRACE_MINUTES"]) <= 1440
    # Only DescribeExecution, and only on this stack's executions
    [scope] = _actions_on("ReconcileSendsFunction", "states:DescribeExecution")
    assert ":execution:${SendNotificationStateMachine.Name}:*" in scope["Fn::Sub"]
    assert not _actions_on("ReconcileSendsFunction", "states:RedriveExecution")


def test_the_api_and_the_state_machine_may_redrive_only_this_stacks_executions() -> None:
    [api_scope] = _actions_on("ApiFunction", "states:RedriveExecution")
    assert ":execution:${SendNotificationStateMachine.Name}:*" in api_scope["Fn::Sub"]
    [children] = _actions_on("SendNotificationStateMachine", "states:RedriveExecution")
    # The Map Run's child executions only: `<state machine>/<map run label>:<child>`.
    scopes = children if isinstance(children, list) else [children]
    assert [scope["Fn::Sub"].split(":execution:")[-1] for scope in scopes] == [
        "${AWS::StackName}-send-notification/*"
    ]
