"""The sample events in events/ run through their functions, as `sam local invoke -e` would.

Each event is the input its state receives; against the sample data they refer
to (`pushflow invoke --sample-data`), every function answers without an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from pushflow_local.demo import SAMPLE_NOTIFICATION_ID, seed_sample_data
from tests.conftest import REPO_ROOT, load_event

pytestmark = pytest.mark.e2e

EVENTS = {
    "PrepareFunction": "prepare.json",
    "ResolveRecipientsFunction": "resolve_recipients.json",
    "FilterRecipientsFunction": "filter_recipients.json",
    "PublishBatchFunction": "publish_batch.json",
    "RecordResultsFunction": "record_results.json",
    "RecordPageFailureFunction": "record_page_failure.json",
    "FinalizeFunction": "finalize.json",
    "PlanDeferredFunction": "plan_deferred.json",
}


@pytest.fixture
def sample_runtime(clean_runtime: Any) -> Any:
    seed_sample_data(clean_runtime)
    return clean_runtime


def test_every_task_function_has_a_sample_event() -> None:
    from pushflow_local.template import Template

    functions = {spec.logical_id for spec in Template().functions()}
    # Not states of the send: the API, the deploy-time custom resources, token events.
    others = {
        "ApiFunction",
        "MigrateFunction",
        "PlatformApplicationFunction",
        "TokenLifecycleFunction",
        "DeviceSweepFunction",
        "ReconcileSendsFunction",
    }
    missing = functions - set(EVENTS) - others
    assert not missing, f"no sample event for {sorted(missing)}"


@pytest.mark.parametrize(("function", "event_file"), sorted(EVENTS.items()))
def test_the_sample_event_runs_through_its_function(
    sample_runtime: Any, function: str, event_file: str
) -> None:
    result = sample_runtime.invoke(function, load_event(event_file))

    assert isinstance(result, dict)
    assert result.get("notification_id") == SAMPLE_NOTIFICATION_ID


def test_resolve_reads_the_sample_page_and_publish_sends_to_its_devices(
    sample_runtime: Any,
) -> None:
    resolved = sample_runtime.invoke(
        "ResolveRecipientsFunction", load_event("resolve_recipients.json")
    )
    assert [r["device_id"] for r in resolved["recipients"]] == [1, 2, 3]

    published = sample_runtime.invoke("PublishBatchFunction", load_event("publish_batch.json"))
    assert published["recorded"] is True
    assert published["outcomes"] == {"sent": 2, "opted_out": 1}
    rows = sample_runtime.services.repository.page_deliveries(SAMPLE_NOTIFICATION_ID, 0)
    assert {d: r.outcome.value for d, r in rows.items()} == {1: "sent", 2: "opted_out", 3: "sent"}


def test_the_api_sample_events_answer_like_api_gateway(sample_runtime: Any) -> None:
    answer = sample_runtime.invoke("ApiFunction", load_event("api_get_notification.json"))

    assert answer["statusCode"] == 200
    assert json.loads(answer["body"])["notification_id"] == SAMPLE_NOTIFICATION_ID


def test_pushflow_invoke_runs_a_handler_from_the_command_line() -> None:
    # A process of its own, with none of this session's servers in its
    # environment: the command starts its own local stack.
    environment = {
        name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pushflow_local.cli",
            "invoke",
            "Finalize",
            "-e",
            "events/finalize.json",
            "--sample-data",
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout[completed.stdout.index("{") :])
    assert result["notification_id"] == SAMPLE_NOTIFICATION_ID
    assert result["status"] == "completed"


def test_the_api_sample_events_store_what_they_say(sample_runtime: Any) -> None:
    # The device registration's answer, and the device as stored and as listed.
    event = load_event("api_register_device.json")
    sent = json.loads(event["body"])
    answer = sample_runtime.invoke("ApiFunction", event)
    assert answer["statusCode"] in (200, 201), answer["body"]
    device_id = int(json.loads(answer["body"])["device_id"])
    stored = sample_runtime.services.repository.run(
        "SELECT d.platform, d.token, u.external_id, u.locale, u.time_zone FROM devices d"
        " JOIN users u ON u.id = d.user_id WHERE d.id = :id",
        id=device_id,
    )
    sub = event["requestContext"]["authorizer"]["claims"]["sub"]
    assert stored == [[sent["platform"], sent["token"], sub, sent["locale"], sent["time_zone"]]]

    # The send's answer, and the notification as stored, with its execution started.
    event = load_event("api_send_notification.json")
    answer = sample_runtime.invoke("ApiFunction", event)
    assert answer["statusCode"] in (200, 202), answer["body"]
    accepted = json.loads(answer["body"])
    notification = sample_runtime.services.repository.get_notification(accepted["notification_id"])
    assert notification.request == json.loads(event["body"])
    assert notification.category == "news"
    assert notification.execution_arn
    execution = sample_runtime.wait(notification.execution_arn, timeout=60)
    assert execution["status"] == "SUCCEEDED"


TASK_FUNCTIONS = [*sorted(EVENTS), "TokenLifecycleFunction"]


@pytest.mark.parametrize("function", TASK_FUNCTIONS)
@pytest.mark.parametrize(
    "event",
    [{}, {"unrelated": 1}, [1, 2], "text", load_event("api_get_notification.json")],
    ids=["empty", "unrelated", "array", "string", "an API event"],
)
def test_an_event_of_another_shape_is_a_named_error(
    runtime: Any, function: str, event: Any
) -> None:
    from pushflow.domain.errors import UnsupportedEvent

    with pytest.raises(UnsupportedEvent) as raised:
        runtime.invoke(function, event)
    # The message names the function whose event it is not.
    assert function.removesuffix("Function") in str(raised.value)


def test_every_sample_event_belongs_to_a_function_or_the_state_machine() -> None:
    others = {
        "state_machine_input.json",  # the SendNotification execution's input
        "token_lifecycle_sweep.json",  # DeviceSweepFunction's scheduled event
        "reconcile_sends.json",  # ReconcileSendsFunction's scheduled event
    }
    prefixes = ("api_", "migrate_", "platform_application_", "token_lifecycle_")
    for path in (REPO_ROOT / "events").glob("*.json"):
        assert (
            path.name in EVENTS.values() or path.name in others or path.name.startswith(prefixes)
        ), f"{path.name} fits no function"


def test_the_reconciler_sample_event_runs_through_its_function(sample_runtime: Any) -> None:
    summary = sample_runtime.invoke("ReconcileSendsFunction", load_event("reconcile_sends.json"))

    assert isinstance(summary, dict)
    assert isinstance(summary["finalized"], dict)
    assert summary["examined"] >= 0


def test_the_state_machine_input_sample_runs_a_send(sample_runtime: Any) -> None:
    sfn = sample_runtime.client("stepfunctions")
    started = sfn.start_execution(
        stateMachineArn=sample_runtime.state_machine_arn,
        input=json.dumps(load_event("state_machine_input.json")),
    )
    execution = sample_runtime.wait(started["executionArn"], timeout=60)
    assert execution["status"] == "SUCCEEDED"
    notification = sample_runtime.services.repository.get_notification(SAMPLE_NOTIFICATION_ID)
    assert notification.status.value in ("completed", "completed_with_failures")


@pytest.mark.parametrize(
    ("event_file", "changed"),
    [
        ("token_lifecycle_endpoint_updated.json", "disabled"),
        ("token_lifecycle_delivery_failure.json", "disabled"),
        ("token_lifecycle_endpoint_deleted.json", "removed"),
    ],
)
def test_the_token_lifecycle_samples_act_on_a_seeded_device(
    sample_runtime: Any, event_file: str, changed: str
) -> None:
    # The samples name the endpoint of a device `--sample-data` seeds: they change it.
    summary = sample_runtime.invoke("TokenLifecycleFunction", load_event(event_file))
    assert summary[changed] == 1, summary
    (state,) = sample_runtime.services.repository.run(
        "SELECT count(*) FILTER (WHERE enabled), count(*) FROM devices WHERE endpoint_arn LIKE"
        " '%/8c0d7b52-6f0e-3b6a-a1d4-3e2f1b0c9d22'"
    )
    assert state == ([0, 1] if changed == "disabled" else [0, 0])


def test_the_custom_resource_samples_run_locally_and_answer_a_stand_in() -> None:
    # A process of its own (its own stack): the sample's secret is created with the
    # sample data, and the answer goes to a local stand-in, not to CloudFormation's URL.
    environment = {
        name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pushflow_local.cli",
            "invoke",
            "PlatformApplication",
            "-e",
            "events/platform_application_create.json",
            "--sample-data",
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    answer = completed.stdout[completed.stdout.index("CloudFormation would have received:") :]
    sent = json.loads(answer[answer.index("{") :])
    assert sent["Status"] == "SUCCESS", sent
    assert sent["Data"]["Arn"].endswith(":app/GCM/pushflow-dev-android")
