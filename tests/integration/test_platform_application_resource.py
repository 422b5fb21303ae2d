"""The Custom::PlatformApplication resources: SNS platform applications from secrets (moto).

The real handler reads the APNs/FCM secret from (moto's) Secrets Manager and
creates the application in (moto's) SNS; CloudFormation's answer is read at
the response URL. Credentials must reach SNS and nothing else.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pushflow.adapters.platform_applications import credential_attributes
from pushflow.domain.errors import InvalidRequest
from pushflow_local.runtime import LocalRuntime
from tests.integration.custom_resources import AnswerInbox, context, request_event

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

SIGNING_KEY = "-----BEGIN PRIVATE KEY-----\nFAKE-SIGNING-KEY-FOR-TESTS\n-----END PRIVATE KEY-----"
APNS_SECRET = {
    "signing_key": SIGNING_KEY,
    "key_id": "ABC123DEFG",
    "team_id": "TEAM123456",
    "bundle_id": "com.example.pushflow",
}
SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "pushflow-test",
    "private_key_id": "0123456789abcdef",
    "private_key": "-----BEGIN PRIVATE KEY-----\nFAKE-FCM-KEY-FOR-TESTS\n-----END PRIVATE KEY-----",
    "client_email": "pushflow@pushflow-test.iam.gserviceaccount.com",
}
TOPIC = "arn:aws:sns:us-east-1:123456789012:pushflow-local-TokenEventsTopic-TEST"


@pytest.fixture
def answers() -> Iterator[AnswerInbox]:
    with AnswerInbox() as inbox:
        yield inbox


def secret(runtime: LocalRuntime, value: Any) -> str:
    response = runtime.client("secretsmanager").create_secret(
        Name=f"pushflow/test/{uuid.uuid4().hex[:8]}", SecretString=json.dumps(value)
    )
    return str(response["ARN"])


def invoke(runtime: LocalRuntime, event: dict[str, Any]) -> Any:
    handler = runtime.functions["PlatformApplicationFunction"].handler()
    return handler(event, context("PlatformApplicationFunction"))


def attributes(runtime: LocalRuntime, arn: str) -> dict[str, str]:
    response = runtime.client("sns").get_platform_application_attributes(PlatformApplicationArn=arn)
    return dict(response["Attributes"])


def test_fcm_application_is_created_from_the_service_account_secret(
    runtime: LocalRuntime, answers: AnswerInbox
) -> None:
    # GIVEN the Firebase service-account file in Secrets Manager
    secret_arn = secret(runtime, SERVICE_ACCOUNT)
    name = f"pushflow-test-{uuid.uuid4().hex[:6]}-android"

    # WHEN CloudFormation creates the FCM platform application
    invoke(
        runtime,
        request_event(
            "platform_application_create.json",
            answers.url,
            properties={"Name": name, "CredentialsSecretArn": secret_arn, "EventTopicArn": TOPIC},
        ),
    )

    # THEN SNS has it, with the service account as credential and the event topics set
    answer = answers.only_answer()
    assert answer["Status"] == "SUCCESS"
    arn = answer["PhysicalResourceId"]
    assert arn.endswith(f":app/GCM/{name}")
    assert answer["Data"] == {"Arn": arn}
    held = attributes(runtime, arn)
    assert json.loads(held["PlatformCredential"]) == SERVICE_ACCOUNT
    for event in ("EventEndpointUpdated", "EventEndpointDeleted", "EventDeliveryFailure"):
        assert held[event] == TOPIC
    # AND the answer carries no credential
    assert "PRIVATE KEY" not in json.dumps(answer)


def test_apns_application_uses_the_token_key_and_updates_in_place(
    runtime: LocalRuntime, answers: AnswerInbox
) -> None:
    secret_arn = secret(runtime, APNS_SECRET)
    name = f"pushflow-test-{uuid.uuid4().hex[:6]}-ios"
    properties = {
        "Name": name,
        "Platform": "APNS",
        "CredentialsSecretArn": secret_arn,
        "EventTopicArn": TOPIC,
    }
    invoke(
        runtime,
        request_event("platform_application_create.json", answers.url, properties=properties),
    )
    arn = answers.only_answer()["PhysicalResourceId"]
    held = attributes(runtime, arn)
    assert (held["PlatformPrincipal"], held["PlatformCredential"]) == ("ABC123DEFG", SIGNING_KEY)
    assert (held["ApplePlatformTeamID"], held["ApplePlatformBundleID"]) == (
        "TEAM123456",
        "com.example.pushflow",
    )

    # WHEN the key is rotated and the stack updated (PlatformKeysRevision bumped)
    runtime.client("secretsmanager").put_secret_value(
        SecretId=secret_arn, SecretString=json.dumps({**APNS_SECRET, "key_id": "NEWKEY4567"})
    )
    update = request_event(
        "platform_application_create.json",
        answers.url,
        RequestType="Update",
        PhysicalResourceId=arn,
        properties={**properties, "CredentialsRevision": "2"},
        OldResourceProperties=properties,
    )
    invoke(runtime, update)

    # THEN the same application carries the new key: endpoints stay valid
    assert answers.answers[-1]["PhysicalResourceId"] == arn
    assert attributes(runtime, arn)["PlatformPrincipal"] == "NEWKEY4567"


def test_a_new_name_replaces_the_application_and_delete_removes_it(
    runtime: LocalRuntime, answers: AnswerInbox
) -> None:
    secret_arn = secret(runtime, SERVICE_ACCOUNT)
    old = {"Name": f"pushflow-test-{uuid.uuid4().hex[:6]}-a", "CredentialsSecretArn": secret_arn}
    invoke(runtime, request_event("platform_application_create.json", answers.url, properties=old))
    old_arn = answers.answers[-1]["PhysicalResourceId"]

    new = {**old, "Name": old["Name"] + "-renamed"}
    invoke(
        runtime,
        request_event(
            "platform_application_create.json",
            answers.url,
            RequestType="Update",
            PhysicalResourceId=old_arn,
            properties=new,
            OldResourceProperties={**old, "Platform": "GCM"},
        ),
    )
    new_arn = answers.answers[-1]["PhysicalResourceId"]
    assert new_arn != old_arn and new_arn.endswith("-renamed")

    # CloudFormation then deletes the old one
    invoke(
        runtime,
        request_event(
            "platform_application_create.json",
            answers.url,
            RequestType="Delete",
            PhysicalResourceId=old_arn,
        ),
    )
    assert answers.answers[-1]["Status"] == "SUCCESS"
    arns = {
        app["PlatformApplicationArn"]
        for app in runtime.client("sns").list_platform_applications()["PlatformApplications"]
    }
    assert old_arn not in arns and new_arn in arns


def test_a_wrong_secret_fails_the_deploy_without_revealing_it(
    runtime: LocalRuntime, answers: AnswerInbox
) -> None:
    secret_arn = secret(runtime, {k: v for k, v in APNS_SECRET.items() if k != "key_id"})
    invoke(
        runtime,
        request_event(
            "platform_application_create.json",
            answers.url,
            properties={"Platform": "APNS", "CredentialsSecretArn": secret_arn},
        ),
    )
    answer = answers.only_answer()
    assert answer["Status"] == "FAILED"
    assert "lacks key_id" in answer["Reason"]
    assert "PRIVATE KEY" not in json.dumps(answer)


def test_the_rollback_of_a_failed_create_deletes_nothing(
    runtime: LocalRuntime, answers: AnswerInbox
) -> None:
    invoke(
        runtime,
        request_event(
            "platform_application_create.json",
            answers.url,
            RequestType="Delete",
            PhysicalResourceId="failed-1234",
        ),
    )
    assert answers.only_answer()["Status"] == "SUCCESS"


@pytest.mark.parametrize(
    ("platform", "value", "complaint"),
    [
        ("GCM", "{not json", "not JSON"),
        ("GCM", json.dumps({"type": "authorized_user"}), "service-account"),
        ("APNS", json.dumps({**APNS_SECRET, "signing_key": "abc"}), ".p8"),
        ("WNS", json.dumps(APNS_SECRET), "unsupported platform"),
    ],
)
def test_secrets_that_cannot_work_are_refused(platform: str, value: str, complaint: str) -> None:
    with pytest.raises(InvalidRequest, match=complaint) as refused:
        credential_attributes(platform, value)
    assert "FAKE" not in str(refused.value)
