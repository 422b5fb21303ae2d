"""The SNS stand-in answers as SNS does, and the deployed publisher handles what boto3 would.

Each test runs its own stand-in (no moto: endpoints from a dict), so each
takes a fraction of a second. Codes and statuses are checked against
botocore's SNS model file, answers are parsed by botocore's query parser.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.session
import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.loaders import Loader
from botocore.parsers import QueryParser

from pushflow.adapters.sns_http import (
    REJECTED_CODES,
    SnsHttpPublisher,
    classify_answer,
    resolve_endpoint,
)
from pushflow.domain.publishing import PublishStatus, PushMessage
from pushflow_local.sns import (
    ANSWER_ERROR,
    DELIVER_THEN_ERROR,
    DELIVER_THEN_HANG,
    DELIVER_THEN_RESET,
    ERROR_STATUS,
    MODEL_PUBLISH_ERRORS,
    REGION_PUBLISH_QUOTAS,
    RESET_BEFORE_READING,
    EndpointState,
    Fault,
    Latency,
    PublishQuota,
    SnsServer,
    error_body,
    region_publish_quota,
)

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
KEY, SECRET = "AKIDSTANDIN", "stand-in-secret"
ARN = "arn:aws:sns:eu-west-1:123456789012:endpoint/{platform}/pushflow/{name}"
MESSAGE = json.dumps({"default": "hi", "GCM": json.dumps({"notification": {"title": "hi"}})})


class Endpoints:
    """Endpoints by ARN, and what each was sent."""

    def __init__(self) -> None:
        self.states: dict[str, EndpointState] = {}
        self.delivered: dict[str, list[str]] = {}

    def add(
        self, name: str, platform: str = "GCM", enabled: bool = True, app_enabled: bool = True
    ) -> str:
        arn = ARN.format(platform=platform, name=name)
        self.states[arn] = EndpointState(platform, enabled, app_enabled)
        return arn

    def lookup(self, endpoint_arn: str) -> EndpointState | None:
        return self.states.get(endpoint_arn)

    def deliver(self, endpoint_arn: str, message_id: str, message: str) -> None:
        self.delivered.setdefault(endpoint_arn, []).append(message_id)


@pytest.fixture
def endpoints() -> Endpoints:
    return Endpoints()


@pytest.fixture
def sns(endpoints: Endpoints) -> Iterator[SnsServer]:
    with SnsServer(
        endpoints, REGION, credentials={KEY: SECRET}, latency=Latency(0.001, 0.005), seed=7
    ) as server:
        yield server


def publisher(server: SnsServer, credentials: Any = None, **options: Any) -> SnsHttpPublisher:
    return SnsHttpPublisher(
        server.url,
        region=options.pop("region", REGION),
        credentials=credentials or Credentials(KEY, SECRET),
        **options,
    )


def publish_one(server: SnsServer, arn: str, message: str = MESSAGE, **options: Any) -> Any:
    sender = publisher(server, **options)
    try:
        [outcome] = sender.publish([PushMessage(1, arn, message, {})])
    finally:
        sender.close()
    return outcome


# -- codes, statuses and the answer's shape -------------------------------------------


def sns_model() -> dict[str, Any]:
    model: dict[str, Any] = Loader().load_service_model("sns", "service-2")
    return model


def test_the_stand_ins_codes_and_statuses_are_botocores_sns_model() -> None:
    model = sns_model()
    declared = {
        shape["error"]["code"]: shape["error"]["httpStatusCode"]
        for shape in model["shapes"].values()
        if "error" in shape
    }
    publish_errors = {
        model["shapes"][error["shape"]]["error"]["code"]
        for error in model["operations"]["Publish"]["errors"]
    }

    assert publish_errors == MODEL_PUBLISH_ERRORS
    for code in MODEL_PUBLISH_ERRORS | {"Throttled"}:
        assert ERROR_STATUS[code] == declared[code], code
    # Codes the model does not declare are the query protocol's common ones.
    assert ERROR_STATUS["Throttling"] == 400
    assert {code for code in ERROR_STATUS if code in declared} == MODEL_PUBLISH_ERRORS | {
        "Throttled"
    }


@pytest.mark.parametrize("code", sorted(ERROR_STATUS))
def test_each_error_answer_parses_as_botocore_parses_sns_errors(code: str) -> None:
    model = botocore.session.get_session().get_service_model("sns")
    parsed = QueryParser().parse(
        {
            "status_code": ERROR_STATUS[code],
            "headers": {},
            "body": error_body(code, "why & how", "rid-1"),
        },
        model.operation_model("Publish").output_shape,
    )

    assert parsed["Error"]["Code"] == code
    assert parsed["Error"]["Message"] == "why & how"
    assert parsed["ResponseMetadata"]["RequestId"] == "rid-1"


# What each answer means (the one classification table), for every code the stand-in gives.
OUTCOME_OF_CODE = {
    "EndpointDisabled": PublishStatus.ENDPOINT_DISABLED,
    "NotFound": PublishStatus.ENDPOINT_DISABLED,
    "Throttled": PublishStatus.THROTTLED,
    "Throttling": PublishStatus.THROTTLED,
    "KMSThrottling": PublishStatus.THROTTLED,
    "InternalError": PublishStatus.UNKNOWN,
    "InternalFailure": PublishStatus.UNKNOWN,
    "ServiceUnavailable": PublishStatus.UNKNOWN,
    "InvalidParameter": PublishStatus.FAILED,
    "ParameterValueInvalid": PublishStatus.FAILED,
    "ValidationException": PublishStatus.FAILED,
    "InvalidAction": PublishStatus.FAILED,
    **dict.fromkeys(REJECTED_CODES & set(ERROR_STATUS), PublishStatus.REJECTED),
}


def test_every_code_the_stand_in_gives_has_an_outcome() -> None:
    assert set(OUTCOME_OF_CODE) == set(ERROR_STATUS)


@pytest.mark.parametrize("code", sorted(ERROR_STATUS))
def test_each_code_the_stand_in_answers_gets_its_outcome(
    sns: SnsServer, endpoints: Endpoints, code: str
) -> None:
    arn = endpoints.add("any")
    with sns.faulty(Fault(ANSWER_ERROR, code)):
        outcome = publish_one(sns, arn)

    assert (outcome.status, outcome.error) == (OUTCOME_OF_CODE[code], code)
    assert endpoints.delivered == {}
    assert sns.publishes == 1  # answered once, never sent again


@pytest.mark.parametrize("code", sorted(REJECTED_CODES))
def test_answers_that_say_the_whole_send_cannot_work_reject_it(code: str) -> None:
    assert classify_answer(1, code, ERROR_STATUS.get(code, 400)).status is PublishStatus.REJECTED


def test_any_429_throttles_and_any_other_5xx_may_have_gone() -> None:
    assert classify_answer(1, "TooManyRequests", 429).status is PublishStatus.THROTTLED
    assert classify_answer(1, "BadGateway", 502).status is PublishStatus.UNKNOWN
    assert classify_answer(1, "Forbidden", 403).status is PublishStatus.REJECTED


# -- what SNS checks ---------------------------------------------------------------------


def test_a_well_signed_publish_is_delivered_once_with_its_message_id(
    sns: SnsServer, endpoints: Endpoints
) -> None:
    arn = endpoints.add("ok")
    outcome = publish_one(sns, arn)

    assert outcome.status is PublishStatus.SENT
    assert endpoints.delivered == {arn: [outcome.message_id]}
    assert sns.published == 1


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"region": "us-west-2"}, "SignatureDoesNotMatch"),  # signed for another region
        ({"credentials": Credentials(KEY, "wrong-secret")}, "SignatureDoesNotMatch"),
        ({"credentials": Credentials("AKIDUNKNOWN", SECRET)}, "InvalidClientTokenId"),
    ],
)
def test_a_badly_signed_publish_is_refused_for_the_whole_send(
    sns: SnsServer, endpoints: Endpoints, options: dict[str, Any], code: str
) -> None:
    arn = endpoints.add("ok")
    outcome = publish_one(sns, arn, **options)

    assert (outcome.status, outcome.error) == (PublishStatus.REJECTED, code)
    assert endpoints.delivered == {}
    assert sns.answered == {code: 1}  # refused once, not retried


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (json.dumps({"GCM": "{}"}), "No default entry"),
        ("not json", "No default entry"),
        (json.dumps({"default": "x", "GCM": json.dumps({"data": "x" * 4100})}), "too long"),
    ],
)
def test_a_message_sns_cannot_take_fails_that_device_only(
    sns: SnsServer, endpoints: Endpoints, message: str, why: str
) -> None:
    arn = endpoints.add("ok")
    outcome = publish_one(sns, arn, message)

    assert (outcome.status, outcome.error) == (PublishStatus.FAILED, "InvalidParameter")
    assert endpoints.delivered == {}


def test_the_platform_payloads_limit_is_the_endpoints_platforms(
    sns: SnsServer, endpoints: Endpoints
) -> None:
    # A big GCM payload does not matter to an APNs endpoint, which gets its own key.
    arn = endpoints.add("ios", platform="APNS")
    message = json.dumps({"default": "x", "APNS": "{}", "GCM": json.dumps({"d": "x" * 5000})})
    assert publish_one(sns, arn, message).status is PublishStatus.SENT


@pytest.mark.parametrize(
    ("state", "code", "status"),
    [
        ({"enabled": False}, "EndpointDisabled", PublishStatus.ENDPOINT_DISABLED),
        ({"app_enabled": False}, "PlatformApplicationDisabled", PublishStatus.REJECTED),
        (None, "NotFound", PublishStatus.ENDPOINT_DISABLED),
    ],
)
def test_the_target_is_checked_as_sns_checks_it(
    sns: SnsServer,
    endpoints: Endpoints,
    state: dict[str, bool] | None,
    code: str,
    status: PublishStatus,
) -> None:
    arn = endpoints.add("t", **state) if state is not None else ARN.format(platform="GCM", name="x")
    outcome = publish_one(sns, arn)

    assert (outcome.status, outcome.error) == (status, code)
    assert endpoints.delivered == {}


# -- quota and latency ---------------------------------------------------------------------


def test_a_burst_over_the_accounts_quota_is_throttled_429(endpoints: Endpoints) -> None:
    # GIVEN a quota of 50 publishes/s whose clock stands still: 50 tokens, no refill
    quota = PublishQuota(50, clock=lambda: 1000.0)
    arns = [endpoints.add(f"q{n}") for n in range(80)]
    with SnsServer(
        endpoints, REGION, credentials={KEY: SECRET}, latency=Latency(0.0, 0.0), quota=quota
    ) as server:
        sender = publisher(server, concurrency=16)
        try:
            outcomes = sender.publish(
                [PushMessage(n, arn, MESSAGE, {}) for n, arn in enumerate(arns)]
            )
        finally:
            sender.close()

    # THEN 50 go out and 30 are refused as SNS refuses them, none delivered
    statuses = [o.status for o in outcomes]
    assert statuses.count(PublishStatus.SENT) == 50
    assert statuses.count(PublishStatus.THROTTLED) == 30
    assert server.answered == {"Throttled": 30}
    assert sum(len(ids) for ids in endpoints.delivered.values()) == 50


def test_the_quota_refills_at_its_rate() -> None:
    now = [0.0]
    quota = PublishQuota(10, clock=lambda: now[0])
    assert sum(quota.take() for _ in range(15)) == 10
    now[0] += 0.5
    assert sum(quota.take() for _ in range(15)) == 5


def test_the_documented_regional_quotas_are_available() -> None:
    assert region_publish_quota("us-east-1") == 30_000
    assert region_publish_quota("us-west-2") == region_publish_quota("eu-west-1") == 9_000
    assert region_publish_quota("ap-southeast-2") == 1_500
    assert region_publish_quota("af-south-1") == 300
    assert len([q for q in REGION_PUBLISH_QUOTAS.values() if q == 1_500]) >= 3


def test_the_latency_has_the_configured_median_and_tail() -> None:
    import random

    latency = Latency(median=0.020, p99=0.100)
    rng = random.Random(3)
    draws = sorted(latency.draw(rng) for _ in range(20_000))

    assert statistics.median(draws) == pytest.approx(0.020, rel=0.05)
    assert draws[int(len(draws) * 0.99)] == pytest.approx(0.100, rel=0.15)
    assert max(draws) > 0.100  # a tail, not a cap


# -- ambiguous answers: may have gone, never resent ----------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "delivered"),
    [
        (Fault(DELIVER_THEN_ERROR, "InternalError"), "InternalError", True),
        (Fault(DELIVER_THEN_ERROR, "ServiceUnavailable"), "ServiceUnavailable", True),
        (Fault(DELIVER_THEN_HANG), "ReadTimeoutError", True),
        (Fault(DELIVER_THEN_RESET), "ConnectionClosedError", True),
        (Fault(RESET_BEFORE_READING), "ConnectionClosedError", False),
    ],
)
def test_an_answer_lost_after_the_request_was_written_is_unknown_and_not_resent(
    sns: SnsServer, endpoints: Endpoints, fault: Fault, error: str, delivered: bool
) -> None:
    arn = endpoints.add("ambiguous")
    with sns.faulty(fault):
        outcome = publish_one(sns, arn, timeout=0.5)

    assert (outcome.status, outcome.error) == (PublishStatus.UNKNOWN, error)
    assert fault.fired == 1
    assert sns.publishes == 1  # one request: the publisher did not send it again
    assert len(endpoints.delivered.get(arn, [])) == (1 if delivered else 0)


def test_a_refused_push_is_not_sent_and_says_so(sns: SnsServer, endpoints: Endpoints) -> None:
    arn = endpoints.add("refused")
    with sns.faulty(Fault(ANSWER_ERROR, "InternalError")):
        outcome = publish_one(sns, arn)
    # The stand-in refused before delivering; the publisher cannot know: UNKNOWN still.
    assert outcome.status is PublishStatus.UNKNOWN
    assert endpoints.delivered == {}


def test_faults_pick_publishes_by_endpoint_and_by_count(
    sns: SnsServer, endpoints: Endpoints
) -> None:
    arns = [endpoints.add(f"f{n}") for n in range(6)]
    by_endpoint = Fault(ANSWER_ERROR, "EndpointDisabled", endpoints=frozenset({arns[0]}))
    by_count = Fault(ANSWER_ERROR, "Throttled", when=lambda n: n % 2 == 1, times=2)
    sender = publisher(sns, concurrency=1)
    try:
        with sns.faulty(by_endpoint, by_count):
            outcomes = sender.publish([PushMessage(n, a, MESSAGE, {}) for n, a in enumerate(arns)])
    finally:
        sender.close()

    assert [o.status.value for o in outcomes] == [
        "endpoint_disabled",
        "throttled",
        "sent",
        "throttled",
        "sent",
        "sent",
    ]
    assert (by_endpoint.fired, by_count.fired) == (1, 2)


# -- what boto3 would handle ------------------------------------------------------------------


def test_rotated_credentials_are_read_again_when_they_refresh(endpoints: Endpoints) -> None:
    # GIVEN credentials that expire and refresh to a new key, as a Lambda role's do
    now = [datetime(2026, 12, 4, 12, 0, tzinfo=UTC)]
    issued = iter([("AKIDSECOND", "second-secret")])

    def refresh() -> dict[str, str]:
        key, secret = next(issued)
        expiry = now[0] + timedelta(hours=1)
        return {
            "access_key": key,
            "secret_key": secret,
            "token": "",
            "expiry_time": expiry.isoformat(),
        }

    credentials = RefreshableCredentials(
        KEY,
        SECRET,
        None,
        now[0] + timedelta(hours=1),
        refresh,
        "test",
        time_fetcher=lambda: now[0],
    )
    arn = endpoints.add("rotating")
    with SnsServer(
        endpoints,
        REGION,
        credentials={KEY: SECRET, "AKIDSECOND": "second-secret"},
        latency=Latency(0.0, 0.0),
    ) as server:
        sender = publisher(server, credentials=credentials)
        try:
            first = sender.publish([PushMessage(1, arn, MESSAGE, {})])
            # WHEN the first key expires, and SNS no longer takes it
            now[0] += timedelta(hours=2)
            assert server.credentials is not None
            del server.credentials[KEY]
            second = sender.publish([PushMessage(2, arn, MESSAGE, {})])
        finally:
            sender.close()

    # THEN the next push is signed with the refreshed key and goes out
    assert [o.status for o in first + second] == [PublishStatus.SENT, PublishStatus.SENT]
    assert server.answered == {}


def test_clock_skew_is_corrected_from_snss_date_and_the_push_sent_once(
    endpoints: Endpoints,
) -> None:
    # GIVEN SNS's clock 15 minutes ahead of ours
    arn = endpoints.add("skew")
    with SnsServer(
        endpoints,
        REGION,
        credentials={KEY: SECRET},
        latency=Latency(0.0, 0.0),
        clock=lambda: time.time() + 900,
    ) as server:
        sender = publisher(server)
        try:
            # WHEN two pages are published
            first = sender.publish([PushMessage(1, arn, MESSAGE, {})])
            second = sender.publish([PushMessage(2, arn, MESSAGE, {})])
        finally:
            sender.close()

    # THEN the first push was refused once for skew, signed again with SNS's time and
    # sent; the next one is signed with SNS's time from the start
    assert [o.status for o in first + second] == [PublishStatus.SENT, PublishStatus.SENT]
    assert server.answered == {"SignatureDoesNotMatch": 1}
    assert len(endpoints.delivered[arn]) == 2


def test_a_signature_refused_without_skew_is_not_sent_again(
    sns: SnsServer, endpoints: Endpoints
) -> None:
    arn = endpoints.add("bad")
    outcome = publish_one(sns, arn, credentials=Credentials(KEY, "not-the-secret"))

    assert outcome.status is PublishStatus.REJECTED
    assert sns.answered == {"SignatureDoesNotMatch": 1}


def test_fips_and_the_partition_come_from_botocores_endpoint_resolution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL", "AWS_USE_FIPS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    session = botocore.session.get_session()
    assert resolve_endpoint(session, "eu-west-1") == "https://sns.eu-west-1.amazonaws.com"
    assert resolve_endpoint(session, "cn-north-1") == "https://sns.cn-north-1.amazonaws.com.cn"

    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    fips = botocore.session.get_session()
    assert resolve_endpoint(fips, "us-east-1") == "https://sns-fips.us-east-1.amazonaws.com"

    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", "http://127.0.0.1:4575")
    assert resolve_endpoint(botocore.session.get_session(), "us-east-1").startswith(
        "http://127.0.0.1:4575"
    )
    assert os.environ["AWS_USE_FIPS_ENDPOINT"] == "true"
