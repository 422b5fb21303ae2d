"""The SNS publisher's wire format against a bare HTTP server of the test's own.

A threaded HTTP server in the test answers each push by its endpoint ARN: a
MessageId, Throttling, EndpointDisabled, a 500, a rejected parameter, or a
hang-up. The publisher must sign every request with SigV4 for SNS, send the
form botocore would send, and give each answer its outcome from the one
classification table. (tests/integration/test_sns_stand_in.py runs it against
the SNS stand-in.)
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote

import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.serialize import create_serializer

from pushflow.adapters.sns_http import (
    SnsHttpPublisher,
    _ConnectionPool,
    _signed_request,
    _Target,
    form_quote,
    publish_form,
    resolve_endpoint,
)
from pushflow.domain.content import render
from pushflow.domain.payloads import build_sns_message
from pushflow.domain.publishing import PublishStatus, PushMessage

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
CREDENTIALS = Credentials(
    "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token"
)
ARN = "arn:aws:sns:eu-west-1:123456789012:endpoint/GCM/pushflow-android/{}"

ERROR = (
    '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error>'
    "<Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message>"
    "</Error><RequestId>5d7a2c1e-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
)
ANSWERS: dict[str, tuple[int, str]] = {
    "ok": (
        200,
        '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>'
        "<MessageId>{message_id}</MessageId></PublishResult><ResponseMetadata><RequestId>"
        "f1e2d3c4-0000-4000-8000-000000000000</RequestId></ResponseMetadata></PublishResponse>",
    ),
    "throttled": (400, ERROR.format(kind="Sender", code="Throttling", message="Rate exceeded")),
    "disabled": (
        400,
        ERROR.format(kind="Sender", code="EndpointDisabled", message="Endpoint is disabled"),
    ),
    "broken": (500, ERROR.format(kind="Receiver", code="InternalError", message="oops")),
    "invalid": (
        400,
        ERROR.format(kind="Sender", code="InvalidParameter", message="Invalid &amp; rejected"),
    ),
    "bare-503": (503, "Service Unavailable"),
}


class FakeSns(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.clients: set[int] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self.lock:
            self.closed += 1

    def wait_closed(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.closed < count:
            assert time.monotonic() < deadline, "the server did not close the connection"
            time.sleep(0.005)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: FakeSns

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        form = {key: values[0] for key, values in parse_qs(body.decode()).items()}
        target = form.get("TargetArn", "").rsplit("/", 1)[-1]
        server = self.server
        with server.lock:
            server.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": body, "form": form}
            )
            server.clients.add(self.client_address[1])
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        time.sleep(server.delay)
        if target == "held":  # answered once the test lets it
            server.release.wait(10)
        with server.lock:
            server.in_flight -= 1
        if target == "hang-up":
            self.close_connection = True
            return
        status, text = ANSWERS["ok" if target.startswith(("close-after", "held")) else target]
        answer = text.format(message_id=f"msg-{target}").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        # Close without saying so, as an idle timeout would: the client finds out
        # only when it reuses the connection.
        self.close_connection = target.startswith("close-after")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def fake_sns(delay: float = 0.0) -> Iterator[FakeSns]:
    server = FakeSns(delay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def push(target: str, device_id: int = 1) -> PushMessage:
    rendered = render(
        {"title": "Hi {first_name}", "body": "Tom & Jerry: 100% ✓"}, "en", {"first_name": "Anna"}
    )
    message = build_sns_message(rendered, "ios", False)
    return PushMessage(device_id, ARN.format(target), message.message, message.message_attributes)


def publisher(url: str, concurrency: int = 8) -> SnsHttpPublisher:
    return SnsHttpPublisher(url, region=REGION, credentials=CREDENTIALS, concurrency=concurrency)


def test_each_answer_gets_its_outcome_in_the_pages_order() -> None:
    # GIVEN pushes whose endpoints answer in every way SNS answers
    targets = ["ok", "throttled", "disabled", "broken", "invalid", "bare-503"]
    with fake_sns() as sns:
        sender = publisher(sns.url)
        try:
            # WHEN they are published as one page
            outcomes = sender.publish([push(t, n) for n, t in enumerate(targets)])
        finally:
            sender.close()

    # THEN each outcome is in the page's order, with the code SNS answered
    assert [o.device_id for o in outcomes] == list(range(len(targets)))
    assert outcomes[0].status is PublishStatus.SENT
    assert outcomes[0].message_id == "msg-ok"
    assert [(o.status, o.error) for o in outcomes[1:]] == [
        (PublishStatus.THROTTLED, "Throttling"),
        (PublishStatus.ENDPOINT_DISABLED, "EndpointDisabled"),
        (PublishStatus.UNKNOWN, "InternalError"),
        (PublishStatus.FAILED, "InvalidParameter"),
        (PublishStatus.UNKNOWN, "503"),
    ]


def test_requests_are_sigv4_signed_for_sns_in_the_region() -> None:
    with fake_sns() as sns:
        sender = publisher(sns.url)
        try:
            sender.publish([push("ok")])
        finally:
            sender.close()
        request = sns.requests[0]

    headers = request["headers"]
    authorization = headers["Authorization"]
    date = headers["X-Amz-Date"]
    assert authorization.startswith(
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{date[:8]}/{REGION}/sns/aws4_request, "
    )
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "content-type", "x-amz-security-token"} <= set(signed)
    assert headers["X-Amz-Security-Token"] == "session-token"

    # The signature checks out as SNS would check it: recomputed from what arrived.
    received = AWSRequest(
        method="POST",
        url=f"http://{headers['Host']}{request['path']}",
        data=request["body"],
        headers={name: headers[name] for name in headers if name.lower() in signed},
    )
    received.context["timestamp"] = date
    auth = SigV4Auth(CREDENTIALS, "sns", REGION)
    string_to_sign = auth.string_to_sign(received, auth.canonical_request(received))
    assert authorization.endswith(f"Signature={auth.signature(string_to_sign, received)}")
    assert (
        abs(datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp() - time.time())
        < 300
    )


@pytest.mark.parametrize(
    ("endpoint", "credentials"),
    [
        ("https://sns.eu-west-1.amazonaws.com", CREDENTIALS),
        ("http://127.0.0.1:4566/", Credentials("AKIDEXAMPLE", "secret/with+chars")),
        ("https://vpce-0abc.sns.eu-west-1.vpce.amazonaws.com:8443/a path/~x", CREDENTIALS),
    ],
)
def test_the_hand_written_signature_is_botocores(endpoint: str, credentials: Credentials) -> None:
    """The signer is written out for speed: it must give what botocore's SigV4Auth
    gives for the same request at the same instant, byte for byte."""
    target = _Target(_ConnectionPool(endpoint, 10.0), REGION, credentials)
    at = datetime(2026, 11, 24, 23, 59, 59, tzinfo=UTC)
    plain = PushMessage(2, ARN.format("ok"), '{"default":"Grüße & 100% ✓ \\n"}', {})
    for message in (push("ok"), plain):
        body = publish_form(message)
        raw = _signed_request(target, body, now=at)
        head, _, sent_body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])

        expected = AWSRequest(
            method="POST",
            url=target.pool.url,
            data=body,
            headers={"Content-Type": headers["Content-Type"], "Host": headers["Host"]},
        )
        expected.context["timestamp"] = "20261124T235959Z"
        signer = SigV4Auth(credentials.get_frozen_credentials(), "sns", REGION)
        signer._modify_request_before_signing(expected)
        canonical = signer.canonical_request(expected)
        signature = signer.signature(signer.string_to_sign(expected, canonical), expected)

        assert sent_body == body
        assert headers["Content-Length"] == str(len(body))
        assert headers["X-Amz-Date"] == "20261124T235959Z"
        assert headers.get("X-Amz-Security-Token") == credentials.token
        assert headers["Authorization"] == (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/20261124/{REGION}/sns/"
            f"aws4_request, SignedHeaders={signer.signed_headers(signer.headers_to_sign(expected))}"
            f", Signature={signature}"
        )
        assert lines[0] == f"POST {target.pool.path} HTTP/1.1"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "~_.-",
        "a b+c&d=e/f?g#h%i",
        "Grüße ✓ 🎉",
        "\x00\x1f\x7f",
        '{"APNS":"{\\"aps\\"}"}',
    ],
)
def test_form_values_are_percent_encoded_as_urllib_does(value: str) -> None:
    assert form_quote(value) == quote(value, safe="")


def test_the_form_is_the_one_botocore_sends() -> None:
    message = push("ok")
    sent = {key: values[0] for key, values in parse_qs(publish_form(message).decode()).items()}

    model = botocore.session.get_session().get_service_model("sns")
    expected = create_serializer("query").serialize_to_request(
        {
            "TargetArn": message.endpoint_arn,
            "Message": message.message,
            "MessageStructure": "json",
            "MessageAttributes": dict(message.attributes),
        },
        model.operation_model("Publish"),
    )["body"]
    assert message.attributes, "the sample push carries message attributes"
    assert sent == {key: str(value) for key, value in expected.items()}


def test_connections_are_kept_alive_and_in_flight_is_bounded() -> None:
    with fake_sns(delay=0.02) as sns:
        sender = publisher(sns.url, concurrency=4)
        try:
            first = sender.publish([push("ok", n) for n in range(20)])
            second = sender.publish([push("ok", n) for n in range(20)])
        finally:
            sender.close()

    assert all(o.status is PublishStatus.SENT for o in first + second)
    assert len(sns.requests) == 40
    assert sns.max_in_flight == 4
    # Forty pushes over the four connections the first page opened.
    assert len(sns.clients) == 4


def test_a_connection_closed_while_idle_is_replaced_without_a_second_push() -> None:
    with fake_sns() as sns:
        sender = publisher(sns.url, concurrency=1)
        try:
            # The server closes the connection after answering, without a Connection: close.
            assert sender.publish([push("close-after-1", 1)])[0].status is PublishStatus.SENT
            sns.wait_closed(1)  # closed while idle, as a load balancer's timeout does
            outcome = sender.publish([push("close-after-2", 2)])[0]
        finally:
            sender.close()

    assert outcome.status is PublishStatus.SENT
    targets = [r["form"]["TargetArn"].rsplit("/", 1)[-1] for r in sns.requests]
    assert targets == ["close-after-1", "close-after-2"]


def test_a_hang_up_without_an_answer_may_have_gone_and_is_not_resent() -> None:
    with fake_sns() as sns:
        sender = publisher(sns.url, concurrency=1)
        try:
            outcome = sender.publish([push("hang-up")])[0]
        finally:
            sender.close()

    assert outcome.status is PublishStatus.UNKNOWN
    assert outcome.error == "ConnectionClosedError"
    assert len(sns.requests) == 1


def test_an_endpoint_nobody_listens_on_is_retryable_as_never_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = publisher(f"http://127.0.0.1:{port}/")
    try:
        outcome = sender.publish([push("ok")])[0]
    finally:
        sender.close()

    assert outcome.status is PublishStatus.RETRYABLE
    assert outcome.error == "EndpointConnectionError"


def test_endpoint_region_and_credentials_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = botocore.session.get_session()
    monkeypatch.delenv("AWS_ENDPOINT_URL_SNS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert resolve_endpoint(session, "eu-west-1") == "https://sns.eu-west-1.amazonaws.com"
    assert resolve_endpoint(session, "cn-north-1") == "https://sns.cn-north-1.amazonaws.com.cn"

    with fake_sns() as sns:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", sns.url)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        sender = SnsHttpPublisher()
        try:
            assert sender.publish([push("ok")])[0].status is PublishStatus.SENT
        finally:
            sender.close()
        authorization = sns.requests[0]["headers"]["Authorization"]

    assert "Credential=AKIDFROMENV/" in authorization
    assert "/ap-southeast-2/sns/aws4_request" in authorization


class MotoBehindHttp(BaseHTTPRequestHandler):
    """moto's SNS as an HTTP endpoint: each request goes to the dispatcher moto's mock
    uses for boto3 calls (moto's own server mode needs flask, which local mode does not
    install). moto parses the form as SNS does and answers as SNS does."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        from botocore.awsrequest import AWSPreparedRequest
        from moto.core.models import botocore_stubber

        body = self.rfile.read(int(self.headers["Content-Length"]))
        url = f"https://sns.{REGION}.amazonaws.com/"
        headers: Any = dict(self.headers)
        request = AWSPreparedRequest("POST", url, headers, body, False)
        answer = botocore_stubber.process_request(request)
        assert answer is not None, "moto did not take the request"
        status, _, text = answer
        payload = text.encode() if isinstance(text, str) else text
        self.send_response(int(status))
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_moto_takes_the_pushes_as_sns_would() -> None:
    """The wire format end to end: moto's SNS parses the form and stores the message."""
    import boto3
    from moto.sns.models import sns_backends

    server = ThreadingHTTPServer(("127.0.0.1", 0), MotoBehindHttp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        sns = boto3.client(
            "sns",
            region_name=REGION,
            endpoint_url=url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        app = sns.create_platform_application(
            Name=f"sns-http-{uuid.uuid4().hex[:8]}",
            Platform="GCM",
            Attributes={"PlatformCredential": "local"},
        )["PlatformApplicationArn"]
        live, dead = (
            sns.create_platform_endpoint(PlatformApplicationArn=app, Token=f"token-{n}")[
                "EndpointArn"
            ]
            for n in (1, 2)
        )
        sns.set_endpoint_attributes(EndpointArn=dead, Attributes={"Enabled": "false"})
        message = push("ok")

        sender = SnsHttpPublisher(url, region=REGION, credentials=Credentials("testing", "testing"))
        try:
            sent, disabled, unknown = sender.publish(
                [
                    PushMessage(1, live, message.message, message.attributes),
                    PushMessage(2, dead, message.message, message.attributes),
                    PushMessage(3, f"{live}-gone", message.message, message.attributes),
                ]
            )
        finally:
            sender.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    assert sent.status is PublishStatus.SENT and sent.message_id
    stored = sns_backends["123456789012"][REGION].platform_endpoints[live].messages
    assert stored == {sent.message_id: message.message}
    assert (disabled.status, disabled.error) == (
        PublishStatus.ENDPOINT_DISABLED,
        "EndpointDisabled",
    )
    assert (unknown.status, unknown.error) == (PublishStatus.ENDPOINT_DISABLED, "NotFound")


def test_pushes_are_taken_as_they_go_out_and_early_outcomes_come_before_the_last_answer() -> None:
    with fake_sns(delay=0.05) as sns:
        sender = publisher(sns.url, concurrency=4)
        arrived_before_taking: list[int] = []
        early: list[list[int]] = []

        def pushes() -> Iterator[PushMessage]:
            for n in range(12):
                arrived_before_taking.append(len(sns.requests))
                # The last push is answered only once outcomes were handed over.
                yield push("held" if n == 11 else "ok", n)

        def take_early(outcomes: list[Any]) -> None:
            # Handed over while the last push is still unanswered.
            early.append([o.device_id for o in outcomes])
            sns.release.set()

        try:
            outcomes = sender.publish(pushes(), take_early)
        finally:
            sns.release.set()
            sender.close()

    assert [o.device_id for o in outcomes] == list(range(12))
    assert all(o.status is PublishStatus.SENT for o in outcomes)
    # Not all taken up front: the last ones were built after earlier pushes arrived.
    assert arrived_before_taking[0] == 0
    assert arrived_before_taking[-1] >= 4
    # Once, with the outcomes of the waves before the last (never all of them).
    [handed] = early
    assert 4 <= len(handed) < 12
    assert 11 not in handed
    assert len(set(handed)) == len(handed)
