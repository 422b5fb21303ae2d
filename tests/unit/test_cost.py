"""`pushflow cost`: the bill worked out from template.yaml and the ASL.

The transition counts are held to a real send in tests/e2e/test_cost_model.py;
these tests check the arithmetic around them and the command line.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from pushflow_local import cli, cost
from pushflow_local.runtime import REPO_ROOT

pytestmark = pytest.mark.unit

ASL_TEXT = (REPO_ROOT / "statemachines" / "send_notification.asl.json").read_text()
ASL: dict[str, Any] = json.loads(ASL_TEXT)


def function_substitutions() -> dict[str, str]:
    """The template's DefinitionSubstitutions that name functions: `XFunctionArn` -> X."""
    names = {name for name in ASL_TEXT.split("${")[1:]}
    return {
        variable: f"{variable.removesuffix('Arn')}"
        for variable in (name.split("}")[0] for name in names)
        if variable.endswith("FunctionArn")
    }


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["cost", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_figures_a_user_budgets_with(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--recipients", "1000000", "--region", "us-east-1", "--json")
    assert code == 0
    bill = json.loads(out)
    parts = ["sns_usd", "step_functions_usd", "lambda_usd", "s3_usd", "logs_usd"]
    assert bill["total_usd"] == pytest.approx(sum(bill[part] for part in parts))
    # SNS: $0.50 per million publishes and $0.50 per million mobile deliveries
    assert bill["sns_usd"] == pytest.approx(1.00)
    # 30,000 publishes a second in us-east-1
    assert bill["min_wall_seconds"] == pytest.approx(1_000_000 / 30_000)
    assert bill["pages"] == 1_000_000 // bill["page_size"]


def test_the_table_names_each_service(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--recipients", "20000", "--region", "eu-west-1")
    assert code == 0
    for service in ("Step Functions", "Lambda", "SNS", "S3", "CloudWatch Logs", "total"):
        assert service in out
    assert "9,000/s in eu-west-1" in out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--recipients", "-1", "--region", "us-east-1"], "--recipients"),
        (["--recipients", "10", "--region", "moon-central-1"], "unknown region"),
        (["--recipients", "10", "--region", "us-east-1", "--page-size", "0"], "--page-size"),
    ],
)
def test_bad_arguments_get_one_clear_line_and_a_failing_exit(
    capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert complaint in err


def test_the_wall_time_floor_follows_the_regions_publish_quota() -> None:
    quotas = {"us-east-1": 30_000, "us-west-2": 9_000, "eu-west-1": 9_000, "sa-east-1": 300}
    for region, quota in quotas.items():
        assert cost.bill(90_000, region).min_wall_seconds == pytest.approx(90_000 / quota)


def test_transitions_grow_with_pages_as_the_asl_says() -> None:
    stack = cost.read_stack()
    flow = stack.workflow
    small = cost.bill(stack.page_size, "us-east-1", stack=stack)
    big = cost.bill(stack.page_size * 10, "us-east-1", stack=stack)
    # every page more is one child started plus the child's own states
    per_page = 1 + len(flow.child_states)
    assert big.state_transitions - small.state_transitions == 9 * per_page
    assert big.lambda_invocations - small.lambda_invocations == 9 * len(flow.child_tasks)


def test_an_empty_audience_never_enters_the_map() -> None:
    bill = cost.bill(0, "us-east-1")
    assert bill.pages == bill.child_executions == 0
    assert "FanOut" not in cost.read_stack().workflow.empty_parent_states
    assert bill.state_transitions == len(cost.read_stack().workflow.empty_parent_states)


def test_express_children_with_batched_pages_bill_requests_not_states() -> None:
    # GIVEN the same ASL with Express children taking four pages each
    definition = copy.deepcopy(ASL)
    fan_out = definition["States"]["FanOut"]
    fan_out["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] = "EXPRESS"
    fan_out["ItemBatcher"] = {"MaxItemsPerBatch": 4}
    stack = cost.read_stack()
    flow = cost.read_workflow(definition, function_substitutions())
    express = cost.Stack(
        flow, stack.memory_mb, stack.architecture, stack.page_size, stack.publish_concurrency
    )

    # WHEN a send of 10 pages is billed
    bill = cost.bill(stack.page_size * 10, "us-east-1", stack=express)

    # THEN three children are started (one transition each) and billed as Express
    assert bill.child_executions == math.ceil(10 / 4)
    assert bill.state_transitions == len(flow.parent_states) + bill.child_executions
    assert bill.express_requests == bill.child_executions
    assert bill.express_gb_seconds > 0


def test_a_task_that_is_not_lambda_is_refused_not_guessed() -> None:
    definition = copy.deepcopy(ASL)
    definition["States"]["Finalize"]["Resource"] = "arn:aws:states:::dynamodb:putItem"
    with pytest.raises(cost.CostModelError, match="Finalize"):
        cost.read_workflow(definition, function_substitutions())
