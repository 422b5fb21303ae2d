"""A stand-in for SNS's Publish API that answers as SNS does, at its worst on request.

Local mode, the tests and the benchmarks send through the publisher the
deployed functions run (`SnsHttpPublisher`); this server is what it talks to.
It speaks the query protocol (a signed form POST, an XML answer), and
refuses what SNS refuses:

- a request without a SigV4 Authorization header for service `sns` in the
  server's region, or with an X-Amz-Date more than 5 minutes off
  (`SignatureDoesNotMatch`, "Signature expired", with a `Date` header);
  given `credentials`, the signature itself and the access key;
- a `MessageStructure=json` message that is not a JSON object with a
  `default` key, or whose APNs/FCM payload is over 4 KiB (`InvalidParameter`);
- an unknown endpoint (`NotFound`), a disabled one (`EndpointDisabled`), one
  of a disabled platform application (`PlatformApplicationDisabled`);
- more publishes than the account's quota, a token bucket (`Throttled`, 429).

Error codes and HTTP statuses are those of botocore's SNS service model
(`ERROR_STATUS`; a test compares them with the model file). Every answer
comes after a latency drawn from a log-normal distribution with a chosen
median and 99th percentile: the tail is there at any scale.

Tests program faults (`inject`): an error answer, or the ambiguous answers
SNS gives: a 5xx, a hang or a reset after the push was accepted and
delivered, or a reset before the request was read.

One thread serves every connection from a selector and a heap of answers
due (a thread per connection spent more CPU than the client it measured).
In local mode it runs in the runtime's process and reads endpoints from
moto's SNS backend, recording each delivered message where moto keeps an
endpoint's messages (`LocalRuntime.sns_messages()` reads them). The
benchmarks run it in a process of its own (`SnsProcess`), where any
endpoint ARN of the region and account is an enabled endpoint.

    python -m pushflow_local.sns --port 0   # prints the port, serves until killed
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import heapq
import hmac
import itertools
import json
import logging
import math
import random
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import IO, Protocol
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

XMLNS = "http://sns.amazonaws.com/doc/2010-03-31/"

# (code, HTTP status) of every error this stand-in answers. Publish's errors
# and Throttled come from botocore's SNS model; the rest are the query
# protocol's common errors, which the model does not list.
ERROR_STATUS: dict[str, int] = {
    "InvalidParameter": 400,
    "ParameterValueInvalid": 400,
    "InternalError": 500,
    "NotFound": 404,
    "EndpointDisabled": 400,
    "PlatformApplicationDisabled": 400,
    "AuthorizationError": 403,
    "KMSDisabled": 400,
    "KMSInvalidState": 400,
    "KMSNotFound": 400,
    "KMSOptInRequired": 403,
    "KMSThrottling": 400,
    "KMSAccessDenied": 400,
    "InvalidSecurity": 403,
    "ValidationException": 400,
    "Throttled": 429,
    # The query protocol's common errors.
    "Throttling": 400,
    "ServiceUnavailable": 503,
    "InternalFailure": 500,
    "SignatureDoesNotMatch": 403,
    "IncompleteSignature": 400,
    "InvalidClientTokenId": 403,
    "MissingAuthenticationToken": 403,
    "ExpiredToken": 403,
    "AccessDenied": 403,
    "InvalidAction": 400,
}
# The errors of Publish in botocore's model (Throttled is the model's, on no operation).
MODEL_PUBLISH_ERRORS = frozenset(
    {
        "InvalidParameter",
        "ParameterValueInvalid",
        "InternalError",
        "NotFound",
        "EndpointDisabled",
        "PlatformApplicationDisabled",
        "AuthorizationError",
        "KMSDisabled",
        "KMSInvalidState",
        "KMSNotFound",
        "KMSOptInRequired",
        "KMSThrottling",
        "KMSAccessDenied",
        "InvalidSecurity",
        "ValidationException",
    }
)

MAX_SKEW_SECONDS = 300
MAX_PLATFORM_PAYLOAD_BYTES = 4096
MAX_MESSAGE_BYTES = 262_144
# The platform's key in a MessageStructure=json message, by the endpoint's platform.
PLATFORM_KEYS = {"APNS": "APNS", "APNS_SANDBOX": "APNS_SANDBOX", "GCM": "GCM"}

# Publishes per second an account may make, by region (SNS's documented defaults).
REGION_PUBLISH_QUOTAS: dict[str, int] = {
    "us-east-1": 30_000,
    "us-west-2": 9_000,
    "eu-west-1": 9_000,
    **dict.fromkeys(
        ("ap-northeast-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "eu-central-1"),
        1_500,
    ),
    "us-east-2": 1_500,
}
OTHER_REGIONS_PUBLISH_QUOTA = 300


def region_publish_quota(region: str) -> int:
    return REGION_PUBLISH_QUOTAS.get(region, OTHER_REGIONS_PUBLISH_QUOTA)


_ENDPOINT_ARN = re.compile(r"^arn:aws[\w-]*:sns:([\w-]+):(\d{12}):endpoint/([\w]+)/[^/]+/[\w-]+$")
_CREDENTIAL = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,"
    r"\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$"
)
# selectors' epoll and poll round a timeout up to the millisecond: wake this
# much early and sleep the rest, so answers do not leave up to 1 ms late.
_WAKE_EARLY = 0.001


# -- what the server knows of endpoints -------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointState:
    platform: str  # APNS, APNS_SANDBOX, GCM
    enabled: bool
    application_enabled: bool


class EndpointDirectory(Protocol):
    def lookup(self, endpoint_arn: str) -> EndpointState | None:
        """The endpoint's state, or None when SNS has no such endpoint."""
        ...

    def deliver(self, endpoint_arn: str, message_id: str, message: str) -> None:
        """Keep a message the endpoint was sent (what the device got)."""
        ...


def _enabled(value: object) -> bool:
    return value is True or str(value).lower() == "true"


class MotoEndpoints:
    """Endpoints and platform applications as moto's SNS backend (this process) holds them."""

    def __init__(self, account: str, region: str) -> None:
        self.account = account
        self.region = region

    def _backend(self) -> object:
        from moto.sns.models import sns_backends

        return sns_backends[self.account][self.region]

    def lookup(self, endpoint_arn: str) -> EndpointState | None:
        endpoint = getattr(self._backend(), "platform_endpoints", {}).get(endpoint_arn)
        if endpoint is None:
            return None
        application = endpoint.application
        return EndpointState(
            platform=str(application.platform),
            enabled=_enabled(endpoint.attributes.get("Enabled", True)),
            application_enabled=_enabled(application.attributes.get("Enabled", True)),
        )

    def deliver(self, endpoint_arn: str, message_id: str, message: str) -> None:
        endpoint = getattr(self._backend(), "platform_endpoints", {}).get(endpoint_arn)
        if endpoint is not None:
            endpoint.messages[message_id] = message


class AnyEndpoint:
    """Every well-formed endpoint ARN of the region and account is an enabled endpoint
    (the benchmarks' stand-in has no moto to ask); messages are counted, not kept."""

    def __init__(self, account: str, region: str) -> None:
        self.account = account
        self.region = region

    def lookup(self, endpoint_arn: str) -> EndpointState | None:
        found = _ENDPOINT_ARN.match(endpoint_arn)
        if not found or found.group(1) != self.region or found.group(2) != self.account:
            return None
        return EndpointState(found.group(3), enabled=True, application_enabled=True)

    def deliver(self, endpoint_arn: str, message_id: str, message: str) -> None:
        pass


# -- latency and quota ----------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """A log-normal answer time: half the answers within `median`, 99 % within `p99`."""

    median: float = 0.020
    p99: float = 0.100

    def __post_init__(self) -> None:
        if self.median < 0 or (self.median > 0 and self.p99 < self.median):
            raise ValueError("latency needs 0 <= median <= p99")

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    @property
    def sigma(self) -> float:
        # The 99th percentile of a standard normal distribution is 2.3263 sigmas.
        return math.log(self.p99 / self.median) / 2.3263 if self.median > 0 else 0.0

    def draw(self, rng: random.Random) -> float:
        if self.median <= 0:
            return 0.0
        return self.median * math.exp(rng.gauss(0.0, self.sigma))


class PublishQuota:
    """The account's publishes per second as a token bucket holding one second's worth."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0:
            raise ValueError("a publish quota must be positive")
        self.per_second = per_second
        self._clock = clock
        self._tokens = per_second
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.per_second, self._tokens + (now - self._at) * self.per_second)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


# -- faults ---------------------------------------------------------------------------------

# What a fault does to a Publish.
ANSWER_ERROR = "answer_error"  # refuse it with `code` (nothing delivered)
DELIVER_THEN_ERROR = "deliver_then_error"  # deliver, then answer `code` (a 5xx)
DELIVER_THEN_HANG = "deliver_then_hang"  # deliver, never answer (a read timeout)
DELIVER_THEN_RESET = "deliver_then_reset"  # deliver, then reset the connection
RESET_BEFORE_READING = "reset_before_reading"  # reset the connection, nothing delivered
HOLD = "hold"  # deliver, answer once `release` is set (puts answers in a chosen order)
FAULT_ACTIONS = frozenset(
    {
        ANSWER_ERROR,
        DELIVER_THEN_ERROR,
        DELIVER_THEN_HANG,
        DELIVER_THEN_RESET,
        RESET_BEFORE_READING,
        HOLD,
    }
)
# How often a held answer looks at its release.
_HOLD_POLL_SECONDS = 0.005


@dataclass(eq=False)
class Fault:
    """A programmed answer: for Publishes to `endpoints` (all when None) that `when`
    picks by their number (0-based, counted over all Publishes; all when None),
    at most `times` times (no limit when None). `fired` counts them."""

    action: str
    code: str = "InternalError"
    endpoints: frozenset[str] | None = None
    when: Callable[[int], bool] | None = None
    times: int | None = None
    release: threading.Event | None = None
    fired: int = 0

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        if self.action in (ANSWER_ERROR, DELIVER_THEN_ERROR) and self.code not in ERROR_STATUS:
            raise ValueError(f"SNS has no error code {self.code!r}")
        if (self.action == HOLD) != (self.release is not None):
            raise ValueError("a hold, and only a hold, needs a release event")

    def applies(self, number: int, endpoint_arn: str) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.endpoints is not None and endpoint_arn not in self.endpoints:
            return False
        return self.when is None or self.when(number)


# -- the answers ------------------------------------------------------------------------------


def error_body(code: str, message: str, request_id: str) -> bytes:
    kind = "Receiver" if ERROR_STATUS.get(code, 500) >= 500 else "Sender"
    return (
        f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>{kind}</Type><Code>{code}</Code>'
        f"<Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


def publish_body(message_id: str, request_id: str) -> bytes:
    return (
        f'<PublishResponse xmlns="{XMLNS}"><PublishResult><MessageId>{message_id}</MessageId>'
        f"</PublishResult><ResponseMetadata><RequestId>{request_id}</RequestId>"
        "</ResponseMetadata></PublishResponse>"
    ).encode()


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}
_REASONS |= {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


def http_answer(
    status: int, body: bytes, content_type: str = "text/xml", now: float | None = None
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"x-amzn-RequestId: {uuid.uuid4()}\r\nDate: {formatdate(now, usegmt=True)}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class SnsRefusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


def _amz_epoch(amz_date: str) -> int:
    return calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))


def _iso(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


# -- the server ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    buffer: bytes = b""
    arrived: float = 0.0  # when the request in `buffer` began to arrive
    hung: bool = False  # a fault holds it: nothing more is answered on it


@dataclass(order=True)
class _Due:
    when: float
    order: int
    connection: _Connection = field(compare=False)
    answer: bytes = field(compare=False)
    close: bool = field(compare=False)
    reset: bool = field(compare=False, default=False)
    release: threading.Event | None = field(compare=False, default=None)


class SnsServer:
    """The stand-in on 127.0.0.1. `start()` serves from a thread of this process;
    `serve_forever()` serves from the calling thread (`SnsProcess`)."""

    def __init__(
        self,
        directory: EndpointDirectory,
        region: str,
        credentials: Mapping[str, str] | None = None,
        latency: Latency | None = None,
        quota: PublishQuota | None = None,
        port: int = 0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.region = region
        # access key id -> secret key: given, signatures are checked in full.
        self.credentials = dict(credentials) if credentials is not None else None
        self.latency = latency or Latency()
        self.quota = quota
        self.clock = clock
        self.published = 0  # Publishes SNS took (delivered, faults included)
        self.answered: dict[str, int] = {}  # error code -> how many such answers
        # Message id -> the APNs collapse id its Publish carried (AWS.SNS.MOBILE.APNS.
        # COLLAPSE_ID), for pushes that carried one: what an audit of duplicates reads.
        self.apns_collapse_ids: dict[str, str] = {}
        self.faults: list[Fault] = []
        self._publishes = 0  # Publishes that reached the checks, numbered for faults
        self._rng = random.Random(seed)  # noqa: S311 - answer times, not secrets
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", port), backlog=1024)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._due: list[_Due] = []
        self._order = itertools.count()
        # Wakes the serving thread to stop.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # -- programming it ------------------------------------------------------------

    @property
    def publishes(self) -> int:
        """Publishes numbered so far (a fault's `when` gets each one's number)."""
        with self._lock:
            return self._publishes

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self.faults:
                self.faults.remove(fault)

    @contextlib.contextmanager
    def faulty(self, *faults: Fault) -> Iterator[list[Fault]]:
        for fault in faults:
            self.inject(fault)
        try:
            yield list(faults)
        finally:
            for fault in faults:
                self.remove(fault)

    # -- running -------------------------------------------------------------------

    def start(self) -> SnsServer:
        self._thread = threading.Thread(target=self.serve_forever, name="sns-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> SnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(self._timeout()):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        self._read(key.data)
                self._answer_due()
        finally:
            for key in list(self._selector.get_map().values()):
                with contextlib.suppress(OSError):
                    key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
            self._wake_w.close()

    def _timeout(self) -> float | None:
        if not self._due:
            return None
        wait = self._due[0].when - time.monotonic()
        if wait > _WAKE_EARLY:
            return math.floor((wait - _WAKE_EARLY) * 1000) / 1000
        if wait > 0:
            time.sleep(wait)
        return 0

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._selector.register(sock, selectors.EVENT_READ, _Connection(sock))

    def _read(self, connection: _Connection) -> None:
        try:
            chunk = connection.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self._close(connection)
            return
        if connection.hung:
            return
        if not connection.buffer:
            connection.arrived = time.monotonic()
        connection.buffer += chunk
        # Requests sent back to back count from when the first of them arrived.
        while not connection.hung and self._request(connection):
            pass

    def _request(self, connection: _Connection) -> bool:
        """Answer (or queue the answer to) the first whole request in the buffer."""
        buffer = connection.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = buffer[:end].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        length = int(headers.get("content-length") or 0)
        if len(buffer) < start + length:
            return False
        body, connection.buffer = buffer[start : start + length], buffer[start + length :]
        method, _, rest = lines[0].partition(" ")
        path = rest.rsplit(" ", 1)[0]
        close = headers.get("connection", "").lower() == "close"
        if method == "GET" and path == "/stats":
            stats = json.dumps({"published": self.published, "answered": self.answered}).encode()
            self._queue(connection, 0.0, http_answer(200, stats, "application/json"), close)
            return True
        when = connection.arrived + self.latency.draw(self._rng)
        try:
            status, answer_body, fault = self._handle(Request(method, path, headers, body))
        except Exception:  # a bug here answers as SNS's own failures do, and serving goes on
            logging.getLogger(__name__).exception("the SNS stand-in failed on a request")
            status, answer_body, fault = 500, error_body("InternalFailure", "", "-"), None
        action = fault.action if fault is not None else None
        if action == RESET_BEFORE_READING:
            self._reset(connection)
            return False
        if action == DELIVER_THEN_HANG:
            connection.hung = True  # the client's read times out; its close ends it
            return False
        answer = http_answer(status, answer_body, now=self.clock())
        reset = action == DELIVER_THEN_RESET
        release = fault.release if fault is not None else None
        self._queue(connection, when, answer, close, reset, release)
        return True

    def _queue(
        self,
        connection: _Connection,
        when: float,
        answer: bytes,
        close: bool,
        reset: bool = False,
        release: threading.Event | None = None,
    ) -> None:
        due = _Due(when, next(self._order), connection, answer, close, reset, release)
        heapq.heappush(self._due, due)

    def _answer_due(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0].when <= now:
            due = heapq.heappop(self._due)
            if due.connection.sock.fileno() < 0:
                continue
            if due.release is not None and not due.release.is_set():
                due.when = now + _HOLD_POLL_SECONDS
                heapq.heappush(self._due, due)
                continue
            if due.reset:
                self._reset(due.connection)
                continue
            try:
                due.connection.sock.sendall(due.answer)
            except OSError:
                due.close = True
            if due.close:
                self._close(due.connection)

    def _reset(self, connection: _Connection) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a failing load balancer does."""
        with contextlib.suppress(OSError):
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if connection.sock.fileno() >= 0:
            self._selector.unregister(connection.sock)
            connection.sock.close()

    # -- SNS ---------------------------------------------------------------------------

    def _handle(self, request: Request) -> tuple[int, bytes, Fault | None]:
        """(status, body, the fault that shapes the answer) for one request."""
        request_id = str(uuid.uuid4())
        try:
            form = self._checked_form(request)
            if form.get("Action") != "Publish":
                raise SnsRefusal(
                    "InvalidAction", f"Unsupported action: {form.get('Action')!r} (Publish only)"
                )
            endpoint_arn, message = self._checked_publish(form)
            structured = form.get("MessageStructure") == "json"
        except SnsRefusal as refusal:
            return self._error(refusal.code, refusal.message, request_id)
        with self._lock:
            number = self._publishes
            self._publishes += 1
            fault = next((f for f in self.faults if f.applies(number, endpoint_arn)), None)
            if fault is not None:
                fault.fired += 1
        if fault is not None and fault.action == ANSWER_ERROR:
            return self._error(fault.code, f"injected {fault.code}", request_id)
        if fault is not None and fault.action == RESET_BEFORE_READING:
            return 0, b"", fault
        try:
            self._check_target(endpoint_arn, message, structured)
        except SnsRefusal as refusal:
            return self._error(refusal.code, refusal.message, request_id)
        if self.quota is not None and not self.quota.take():
            return self._error("Throttled", "Rate exceeded", request_id)
        message_id = str(uuid.uuid4())
        self.directory.deliver(endpoint_arn, message_id, message)
        collapse_id = _message_attribute(form, APNS_COLLAPSE_ID)
        with self._lock:
            self.published += 1
            if collapse_id is not None:
                self.apns_collapse_ids[message_id] = collapse_id
        if fault is not None and fault.action == DELIVER_THEN_ERROR:
            return self._error(fault.code, f"injected {fault.code}", request_id)
        return 200, publish_body(message_id, request_id), fault

    def _error(self, code: str, message: str, request_id: str) -> tuple[int, bytes, None]:
        with self._lock:
            self.answered[code] = self.answered.get(code, 0) + 1
        return ERROR_STATUS[code], error_body(code, message, request_id), None

    def _checked_form(self, request: Request) -> dict[str, str]:
        """The form of a request signed as SNS requires; SnsRefusal otherwise."""
        if request.method != "POST":
            raise SnsRefusal("InvalidAction", "the query protocol POSTs a form")
        authorization = request.headers.get("authorization")
        if not authorization:
            raise SnsRefusal(
                "MissingAuthenticationToken", "Request is missing Authentication Token"
            )
        found = _CREDENTIAL.match(authorization)
        if not found:
            raise SnsRefusal("IncompleteSignature", "Authorization header requires SigV4 fields")
        access_key, day, region, service, signed, signature = found.groups()
        if service != "sns":
            raise SnsRefusal(
                "SignatureDoesNotMatch", "Credential should be scoped to correct service: 'sns'."
            )
        if region != self.region:
            raise SnsRefusal(
                "SignatureDoesNotMatch",
                f"Credential should be scoped to a valid region, not '{region}'.",
            )
        amz_date = request.headers.get("x-amz-date", "")
        try:
            signed_at = _amz_epoch(amz_date)
        except ValueError:
            raise SnsRefusal("IncompleteSignature", "X-Amz-Date is missing or malformed") from None
        if amz_date[:8] != day:
            raise SnsRefusal("SignatureDoesNotMatch", "Date in Credential scope does not match")
        now = self.clock()
        if signed_at < now - MAX_SKEW_SECONDS:
            raise SnsRefusal(
                "SignatureDoesNotMatch",
                f"Signature expired: {amz_date} is now earlier than"
                f" {_iso(now - MAX_SKEW_SECONDS)} ({_iso(now)} - 5 min.)",
            )
        if signed_at > now + MAX_SKEW_SECONDS:
            raise SnsRefusal(
                "SignatureDoesNotMatch",
                f"Signature not yet current: {amz_date} is still later than"
                f" {_iso(now + MAX_SKEW_SECONDS)} ({_iso(now)} + 5 min.)",
            )
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            raise SnsRefusal("IncompleteSignature", "host and x-amz-date must be signed")
        if self.credentials is not None:
            secret = self.credentials.get(access_key)
            if secret is None:
                raise SnsRefusal(
                    "InvalidClientTokenId", "The security token included in the request is invalid."
                )
            expected = _signature(request, names, secret, amz_date, region)
            if not hmac.compare_digest(expected, signature):
                raise SnsRefusal(
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you"
                    " provided.",
                )
        try:
            return dict(
                parse_qsl(request.body.decode(), keep_blank_values=True, strict_parsing=True)
            )
        except (UnicodeDecodeError, ValueError):
            raise SnsRefusal("InvalidParameter", "the body is not a form") from None

    def _checked_publish(self, form: Mapping[str, str]) -> tuple[str, str]:
        endpoint_arn = form.get("TargetArn") or ""
        message = form.get("Message")
        if not endpoint_arn:
            raise SnsRefusal("InvalidParameter", "Invalid parameter: TargetArn")
        if message is None or message == "":
            raise SnsRefusal("ValidationException", "Message must not be empty")
        if len(message.encode()) > MAX_MESSAGE_BYTES:
            raise SnsRefusal("InvalidParameter", "Invalid parameter: Message too long")
        if form.get("MessageStructure") == "json":
            try:
                structured = json.loads(message)
            except ValueError:
                structured = None
            if not isinstance(structured, dict) or not isinstance(structured.get("default"), str):
                raise SnsRefusal(
                    "InvalidParameter",
                    "Invalid parameter: Message Structure - No default entry in JSON message body",
                )
        return endpoint_arn, message

    def _check_target(self, endpoint_arn: str, message: str, structured: bool) -> None:
        state = self.directory.lookup(endpoint_arn)
        if state is None:
            raise SnsRefusal("NotFound", "Invalid parameter: TargetArn Reason: No endpoint found")
        if not state.application_enabled:
            raise SnsRefusal("PlatformApplicationDisabled", "Platform application is disabled")
        if not state.enabled:
            raise SnsRefusal("EndpointDisabled", "Endpoint is disabled")
        if structured:
            # Checked by _checked_publish: a JSON object with a `default` string.
            parts = json.loads(message)
            payload = parts.get(PLATFORM_KEYS.get(state.platform, ""), parts["default"])
            if len(str(payload).encode()) > MAX_PLATFORM_PAYLOAD_BYTES:
                raise SnsRefusal(
                    "InvalidParameter",
                    f"Invalid parameter: Message too long for {state.platform}"
                    f" ({MAX_PLATFORM_PAYLOAD_BYTES} bytes at most)",
                )


APNS_COLLAPSE_ID = "AWS.SNS.MOBILE.APNS.COLLAPSE_ID"


def _message_attribute(form: Mapping[str, str], name: str) -> str | None:
    """A String message attribute of a Publish form (MessageAttributes.entry.N.*)."""
    for key, value in form.items():
        if key.startswith("MessageAttributes.entry.") and key.endswith(".Name") and value == name:
            return form.get(key.removesuffix(".Name") + ".Value.StringValue")
    return None


def _signature(request: Request, names: list[str], secret: str, amz_date: str, region: str) -> str:
    """SigV4 as SNS recomputes it from what arrived, by botocore's signer: a check
    independent of the publisher's hand-written one."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    received = AWSRequest(
        method=request.method,
        url=f"http://{request.headers.get('host', '')}{request.path}",
        data=request.body,
        headers={name: request.headers.get(name, "") for name in names},
    )
    received.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials("-", secret), "sns", region)
    canonical = signer.canonical_request(received)
    return str(signer.signature(signer.string_to_sign(received, canonical), received))


# -- in a process of its own (the benchmarks) ---------------------------------------------------


class SnsProcess:
    """The stand-in in a child process, so its CPU does not compete with the client
    being measured (as SNS's does not); a context manager that stops it on exit."""

    def __init__(
        self,
        latency: Latency | None = None,
        region: str = "us-east-1",
        account: str = "123456789012",
        quota: float | None = None,
    ) -> None:
        self.latency = latency or Latency()
        self.region = region
        self.account = account
        self.quota = quota
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SnsProcess:
        command = [sys.executable, "-m", "pushflow_local.sns", "--port", "0"]
        command += ["--median", str(self.latency.median), "--p99", str(self.latency.p99)]
        command += ["--region", self.region, "--account", self.account]
        if self.quota is not None:
            command += ["--quota", str(self.quota)]
        # This interpreter, this module: nothing from outside.
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        port = stdout.readline().strip()
        if not port.isdigit():
            self.__exit__()
            raise RuntimeError("the SNS stand-in did not start")
        self.url = f"http://127.0.0.1:{port}/"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(self.url + "stats", timeout=5) as answer:  # noqa: S310
            stats: dict[str, object] = json.load(answer)
        return stats

    def published(self) -> int:
        return int(str(self.stats()["published"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--median", type=float, default=0.020)
    parser.add_argument("--p99", type=float, default=0.100)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account", default="123456789012")
    parser.add_argument("--quota", type=float, default=None, help="publishes/s (default: none)")
    args = parser.parse_args()
    server = SnsServer(
        AnyEndpoint(args.account, args.region),
        args.region,
        latency=Latency(args.median, args.p99),
        quota=PublishQuota(args.quota) if args.quota else None,
        port=args.port,
    )
    print(server.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
