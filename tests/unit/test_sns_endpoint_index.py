"""The index that spares moto's CreatePlatformEndpoint its scan of every endpoint.

The first test fails loudly when moto changes how it looks for an endpoint with
the same token: the index would then silently stop being consulted (or give
other answers than moto's). The others hold the indexed backend to moto's own
answers and state, operation by operation.
"""

from __future__ import annotations

import contextlib
import inspect
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sns.models import sns_backends

from pushflow_local import sns_endpoint_index

pytestmark = pytest.mark.unit

ACCOUNT = "123456789012"
# A region of its own per use: moto keeps one store per account and region for the
# whole process, and the suite's local runtime uses us-east-1.
# Tokens no other test uses (other tests may leave endpoints in these regions too).
TOKENS = f"index-{uuid.uuid4().hex[:8]}"
REGIONS = iter(["eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1", "eu-south-1", "ca-central-1"])


def test_moto_still_finds_duplicates_by_scanning_values_for_the_token() -> None:
    moto_method = sns_endpoint_index.MOTO_CREATE_PLATFORM_ENDPOINT
    assert moto_method.__module__ == "moto.sns.models"
    source = inspect.getsource(moto_method)
    assert "for endpoint in self.platform_endpoints.values():" in source
    assert "token == endpoint.token" in source
    assert "self.platform_endpoints[platform_endpoint.arn] = platform_endpoint" in source
    parameters = list(inspect.signature(moto_method).parameters)
    assert parameters == ["self", "application", "custom_user_data", "token", "attributes"]


@contextlib.contextmanager
def sns(indexed: bool) -> Iterator[tuple[Any, Any]]:
    region = next(REGIONS)
    with mock_aws(), contextlib.ExitStack() as stack:
        client = boto3.client("sns", region_name=region)
        backend = sns_backends[ACCOUNT][region]
        if indexed:
            sns_endpoint_index.install(stack, [backend])
        yield client, backend


def replay(indexed: bool) -> tuple[list[str], list[tuple[str, str, Any, dict[str, Any]]]]:
    """The same operations, moto's answers to each, and the store at the end."""
    answers: list[str] = []
    with sns(indexed) as (client, backend):
        # Endpoints other tests left in this region come first, and are not compared.
        before = len(backend.platform_endpoints)
        apps = [
            client.create_platform_application(
                Name=name, Platform=platform, Attributes={"PlatformCredential": "x"}
            )["PlatformApplicationArn"]
            for name, platform in (("ios", "APNS"), ("android", "GCM"))
        ]

        def create(app: str, token: str, **extra: Any) -> None:
            try:
                arn = client.create_platform_endpoint(
                    PlatformApplicationArn=app, Token=token, **extra
                )["EndpointArn"]
                arns = [e.arn for e in list(backend.platform_endpoints.values())]
                answers.append(f"endpoint #{arns.index(arn) - before}")
            except client.exceptions.InvalidParameterException as error:
                answers.append(f"refused: {error.response['Error']['Code']}")

        for n in range(30):
            create(apps[n % 2], f"{TOKENS}-{n}")
        create(apps[0], f"{TOKENS}-4")  # the same again: the same endpoint
        create(apps[1], f"{TOKENS}-4")  # another application: moto matches the token anyway
        create(apps[0], f"{TOKENS}-6", CustomUserData="other")  # different: refused
        arn = client.create_platform_endpoint(PlatformApplicationArn=apps[0], Token=f"{TOKENS}-8")[
            "EndpointArn"
        ]
        client.delete_endpoint(EndpointArn=arn)
        create(apps[0], f"{TOKENS}-8")  # deleted: created anew
        endpoint = backend.platform_endpoints.pop(
            client.create_platform_endpoint(PlatformApplicationArn=apps[1], Token=f"{TOKENS}-9")[
                "EndpointArn"
            ]
        )
        # re-filed under another ARN, as the sample data (pushflow_local/demo.py) does
        endpoint.arn = endpoint.arn.rsplit("/", 1)[0] + "/5a3e8f8e-1c4b-3a7e-9d2f-0f6b2c1a9e11"
        backend.platform_endpoints[endpoint.arn] = endpoint
        create(apps[1], f"{TOKENS}-9")
        client.set_endpoint_attributes(EndpointArn=endpoint.arn, Attributes={"Enabled": "false"})
        create(apps[1], f"{TOKENS}-9")  # now disabled: refused
        client.delete_platform_application(PlatformApplicationArn=apps[0])
        create(apps[1], f"{TOKENS}-0")  # its app was deleted, with its endpoints
        store = [
            (key, e.token, e.custom_user_data, dict(e.attributes))
            for key, e in list(backend.platform_endpoints.items())[before:]
        ]
    return answers, store


def test_the_indexed_backend_answers_and_stores_as_moto_does() -> None:
    moto_answers, moto_store = replay(indexed=False)
    indexed_answers, indexed_store = replay(indexed=True)
    assert indexed_answers == moto_answers
    # ARNs carry random ids: compare what is stored under each position
    assert [row[1:] for row in indexed_store] == [row[1:] for row in moto_store]
    assert "refused: InvalidParameter" in moto_answers


def test_the_index_follows_every_change_to_the_store() -> None:
    with sns(indexed=True) as (client, backend):
        app = client.create_platform_application(
            Name="ios", Platform="APNS", Attributes={"PlatformCredential": "x"}
        )["PlatformApplicationArn"]
        arns = sns_endpoint_index.create_endpoints(backend, [(app, f"t{n}") for n in range(5)])
        endpoints = backend.platform_endpoints
        assert isinstance(endpoints, sns_endpoint_index.TokenIndexedEndpoints)
        assert [e.arn for e in endpoints.with_token("t3")] == [arns[3]]
        del endpoints[arns[3]]
        assert endpoints.with_token("t3") == []
        endpoints.pop(arns[4])
        assert endpoints.with_token("t4") == []
        endpoints.clear()
        assert endpoints.with_token("t0") == []


def test_endpoints_created_in_the_backend_equal_those_the_api_creates() -> None:
    with sns(indexed=True) as (client, backend):
        app = client.create_platform_application(
            Name="android", Platform="GCM", Attributes={"PlatformCredential": "x"}
        )["PlatformApplicationArn"]
        [direct] = sns_endpoint_index.create_endpoints(backend, [(app, "direct-token")])
        api = client.create_platform_endpoint(PlatformApplicationArn=app, Token="api-token")[
            "EndpointArn"
        ]
        a, b = backend.platform_endpoints[direct], backend.platform_endpoints[api]
        assert (a.application, a.custom_user_data) == (b.application, b.custom_user_data)
        assert {**a.attributes, "Token": "-"} == {**b.attributes, "Token": "-"}
        assert a.arn.rsplit("/", 1)[0] == b.arn.rsplit("/", 1)[0]
        # and the API sees it as its own: the same token again gives the same endpoint
        again = client.create_platform_endpoint(PlatformApplicationArn=app, Token="direct-token")
        assert again["EndpointArn"] == direct
