"""SNS Publish without boto3's per-call cost: signed form POSTs over kept-alive connections.

boto3 spends over 1 ms of CPU on each `publish` (event hooks, model-driven
serialisation and parsing), which holds a Lambda near 750 publishes/s however
many threads wait on SNS. A Publish is one form POST (the query protocol) and
a small XML answer: here the form is built directly, signed with SigV4, and
written to one of a few kept-alive connections.

The signature is computed here, not by botocore's SigV4Auth: for this one
request shape (a POST of a form, three or four headers) botocore's generic
signer costs ~80 microseconds a push (email-package headers, a second pass
over the form), the hand-written one below ~7, with everything but the two
hashes and the HMAC built once a second. Tests check both give the same
Authorization header.

One thread keeps `concurrency` pushes in flight: it writes a request on each
free connection and reads whichever answer arrives first (a selector); a
connection that answers takes the page's next push at once, still registered
with the selector, and goes back to the pool when the page is done. A
thread per push in flight spends more CPU handing the GIL around than on the
pushes (measured: about 350 microseconds of CPU a push with 64 threads, 150
with one); http.client parses each answer's headers with the email package
and writes headers and body separately, so requests and answers are handled
here directly (HTTP/1.1, Content-Length or chunked).

Every answer is classified by one table (`classify_answer`): what it says
the send does next. Nothing is retried here, with two exceptions that cannot
push twice: a request that could not be written (a connection closed while
idle, found closed before writing) goes again on a fresh connection, and a
push refused for clock skew goes again once, signed with the server's time
(the AWS SDKs for Java and JavaScript correct skew so; botocore does not).
After a request was written, a reset, a timeout or a 5xx may hide a push
that went out: it comes back UNKNOWN, never resent.

What boto3 would handle is handled: credentials come from botocore's
provider chain and are read again for each request (RefreshableCredentials
rotate), the endpoint from botocore's resolution (region, FIPS, endpoint
URL settings).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.utils
import functools
import hashlib
import hmac
import itertools
import logging
import os
import re
import select
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from pushflow.config import ConfigurationError
from pushflow.domain.publishing import EarlyOutcomes, PublishOutcome, PublishStatus, PushMessage

API_VERSION = "2010-03-31"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# Servers (and the load balancers in front of SNS) close idle connections; a
# Lambda frozen between invocations comes back to such sockets.
MAX_IDLE_SECONDS = 20.0
MAX_ANSWER_BYTES = 1 << 20
# Once every push of a page is out, `early` outcomes are handed over after this
# long without an answer: the burst of the wave before the last is over.
EARLY_QUIET_SECONDS = 0.001
# Fresh connections a request may fail to be written on before it counts as not sent.
MAX_WRITE_ATTEMPTS = 3

_log = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(rb"<MessageId>\s*([^<\s]+)\s*</MessageId>")
_ERROR_CODE = re.compile(rb"<Code>\s*([^<]+?)\s*</Code>")


class _MalformedAnswer(Exception):
    """Not HTTP, or too long to be an SNS answer."""


# -- the request and the answer ------------------------------------------------


# Percent-encoding as urllib's quote(value, safe="") does it, as one str.translate
# over the value's UTF-8 bytes (read as Latin-1), cheaper than quote. The table
# is a tuple indexed by byte (every code point here is below 256): str.translate
# indexes it in ~60 % of the time it takes to look each character up in a dict.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_PERCENT = tuple(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in range(256))


def form_quote(value: str) -> str:
    return value.encode().decode("latin-1").translate(_PERCENT)


def publish_form(push: PushMessage) -> bytes:
    """The Publish request's body, as botocore's query serializer would send it."""
    return (
        f"Action=Publish&Version={API_VERSION}&TargetArn={form_quote(push.endpoint_arn)}"
        f"&Message={form_quote(push.message)}&MessageStructure=json"
        f"{_attribute_fields(_attributes_key(push.attributes))}"
    ).encode("ascii")


def _attributes_key(attributes: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    return tuple((name, tuple(value.items())) for name, value in attributes.items())


@functools.lru_cache(maxsize=256)
def _attribute_fields(attributes: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]) -> str:
    """The MessageAttributes part of the form (a page's pushes share a handful)."""
    fields: list[tuple[str, str]] = []
    for number, (name, items) in enumerate(attributes, start=1):
        value = dict(items)
        prefix = f"MessageAttributes.entry.{number}"
        fields.append((f"{prefix}.Name", name))
        fields.append((f"{prefix}.Value.DataType", value["DataType"]))
        if "StringValue" in value:
            fields.append((f"{prefix}.Value.StringValue", value["StringValue"]))
        if "BinaryValue" in value:
            binary: Any = value["BinaryValue"]
            raw = binary if isinstance(binary, bytes) else str(binary).encode()
            fields.append((f"{prefix}.Value.BinaryValue", base64.b64encode(raw).decode()))
    return "".join(f"&{form_quote(key)}={form_quote(val)}" for key, val in fields)


# -- what an answer means --------------------------------------------------------

# The one classification table. Codes are botocore's SNS model's and the query
# protocol's common ones; a status decides what a code does not name.
ENDPOINT_GONE_CODES = frozenset({"EndpointDisabled", "NotFound"})
THROTTLED_CODES = frozenset(
    {"Throttled", "Throttling", "ThrottlingException", "KMSThrottling", "RequestLimitExceeded"}
)
# Answers that say the whole send cannot work: no device is at fault.
REJECTED_CODES = frozenset(
    {
        "AuthorizationError",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "InvalidSecurity",
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "PlatformApplicationDisabled",
        "KMSDisabled",
        "KMSInvalidState",
        "KMSNotFound",
        "KMSAccessDenied",
        "KMSOptInRequired",
    }
)
# Answers that mean the request was signed at a time SNS does not accept.
CLOCK_SKEW_CODES = frozenset(
    {"SignatureDoesNotMatch", "RequestExpired", "RequestTimeTooSkewed", "InvalidSignatureException"}
)
# How far the server's clock must be from ours for a refusal to be skew.
CLOCK_SKEW_SECONDS = 240.0

# Transport failures, by whether the request had been written.
CONNECT_FAILED = "EndpointConnectionError"  # nothing written: not sent
CONNECT_TIMEOUT = "ConnectTimeoutError"  # nothing written: not sent
WRITE_FAILED = "WriteFailed"  # not written whole, on fresh connections too: not sent
READ_TIMEOUT = "ReadTimeoutError"  # written, no answer in time: may have gone
CONNECTION_CLOSED = "ConnectionClosedError"  # written, closed or reset unanswered
MALFORMED_ANSWER = "MalformedResponse"  # written, answered with something not SNS's

_NOT_SENT = frozenset({CONNECT_FAILED, CONNECT_TIMEOUT, WRITE_FAILED})


def classify_answer(device_id: int, code: str, status: int) -> PublishOutcome:
    """What an SNS error answer (its code and HTTP status) means for the push."""
    if code in ENDPOINT_GONE_CODES:
        kind = PublishStatus.ENDPOINT_DISABLED
    elif code in THROTTLED_CODES or status == 429:
        kind = PublishStatus.THROTTLED
    elif code in REJECTED_CODES or status in (401, 403):
        kind = PublishStatus.REJECTED
    elif status >= 500:
        # SNS may have delivered before failing: no way to know.
        kind = PublishStatus.UNKNOWN
    else:
        # InvalidParameter, ParameterValueInvalid, ValidationException, any other 4xx:
        # this message cannot be sent.
        kind = PublishStatus.FAILED
    return PublishOutcome(device_id, kind, error=code)


def classify_transport(device_id: int, failure: str) -> PublishOutcome:
    """A push without an answer: safe to send again only if it was never written."""
    kind = PublishStatus.RETRYABLE if failure in _NOT_SENT else PublishStatus.UNKNOWN
    return PublishOutcome(device_id, kind, error=failure)


def parse_answer(device_id: int, status: int, body: bytes) -> PublishOutcome:
    """An SNS answer as the outcome of the push it answers."""
    if status == 200:
        found = _MESSAGE_ID.search(body)
        if found:
            return PublishOutcome(device_id, PublishStatus.SENT, message_id=found.group(1).decode())
        # A 200 without a message id: SNS may have sent it, so never retry it.
        return classify_transport(device_id, MALFORMED_ANSWER)
    code = _ERROR_CODE.search(body)
    return classify_answer(device_id, code.group(1).decode() if code else str(status), status)


def answer_code(body: bytes) -> str | None:
    code = _ERROR_CODE.search(body)
    return code.group(1).decode() if code else None


def parse_http_answer(buffer: bytes, closed: bool) -> tuple[int, bytes, bool, str] | None:
    """(status, body, keep-alive, Date header) once `buffer` holds a whole HTTP/1.x
    answer, else None.

    `closed`: the server closed the connection after `buffer` (a body without a
    length ends there).
    """
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_ANSWER_BYTES:
                raise _MalformedAnswer("no end of headers")
            return None
        status_line, *lines = buffer[:end].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise _MalformedAnswer(status_line[:80])
        status = int(rest[:3])
        buffer = buffer[end + 4 :]
        if status >= 200:
            break
        # 1xx: an interim answer; the final one follows.
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    connection = headers.get("connection", "")
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    date = headers.get("date", "")
    if status in (204, 304):
        return status, b"", keep_alive, date
    if "chunked" in headers.get("transfer-encoding", ""):
        body = _dechunk(buffer)
        return None if body is None else (status, body, keep_alive, date)
    if "content-length" in headers:
        length = int(headers["content-length"])
        return (status, buffer[:length], keep_alive, date) if len(buffer) >= length else None
    return (status, buffer, False, date) if closed else None


def _dechunk(buffer: bytes) -> bytes | None:
    """A chunked body, or None while it is incomplete."""
    body: list[bytes] = []
    position = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(buffer[position:line_end].split(b";", 1)[0], 16)
        position = line_end + 2
        if size == 0:  # then trailers, up to an empty line
            return b"".join(body) if buffer.find(b"\r\n", position) >= 0 else None
        if len(buffer) < position + size + 2:
            return None
        body.append(buffer[position : position + size])
        position += size + 2


# -- connections -------------------------------------------------------------------


def resolve_endpoint(session: Any, region: str) -> str:
    """The SNS endpoint botocore resolves for the region: the partition's DNS suffix,
    FIPS (AWS_USE_FIPS_ENDPOINT / use_fips_endpoint), dual-stack and endpoint URL
    settings (AWS_ENDPOINT_URL_SNS) as boto3 would honor them. Resolved once, by a
    client that is never used to call (its credentials are placeholders)."""
    client = session.create_client(
        "sns",
        region_name=region,
        aws_access_key_id="resolve-only",
        aws_secret_access_key="resolve-only",  # noqa: S106 - never signs anything
    )
    return str(client.meta.endpoint_url)


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    # Answers it carried: a connection that did may have gone stale while idle.
    answers: int = 0

    def receive(self) -> bytes:
        """What arrived (b"" once the server closed)."""
        try:
            data = self.sock.recv(65536)
            # TLS may hold more decrypted bytes than the socket signals.
            while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                data += self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return b""
        return data

    def dropped(self) -> bool:
        """The server closed (or reset) it while it was idle: an idle HTTP/1.1
        connection has nothing to read unless it was closed. Checked before a request
        is written on a reused connection, so a push never goes into one known dead."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _ConnectionPool:
    """Idle kept-alive connections to one endpoint, most recently used first."""

    def __init__(self, endpoint_url: str, timeout: float) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"SNS endpoint {endpoint_url!r} is not an http(s) URL")
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path or "/"
        # The Host header as SigV4 signs it: with the port only when not the default.
        default_port = 443 if self.https else 80
        self.host_header = (
            self.hostname if self.port == default_port else f"{self.hostname}:{self.port}"
        )
        self.url = f"{parts.scheme}://{self.host_header}{self.path}"
        # The path as SigV4 canonicalises it (botocore: quoted, "/" and "~" kept).
        self.canonical_path = quote(self.path, safe="/~")
        self._timeout = timeout
        self._tls = (
            ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            if self.https
            else None
        )
        self._idle: list[tuple[_Connection, float]] = []
        self._lock = threading.Lock()

    def get(self) -> _Connection:
        """An idle connection, or a new one (connecting raises OSError)."""
        now = time.monotonic()
        stale: list[_Connection] = []
        found: _Connection | None = None
        with self._lock:
            while self._idle:
                connection, since = self._idle.pop()
                if now - since <= MAX_IDLE_SECONDS:
                    found = connection
                    break
                stale.append(connection)
        if found is not None and found.dropped():
            stale.append(found)
            found = None
        for connection in stale:
            connection.close()
        if found is not None:
            return found
        sock = socket.create_connection((self.hostname, self.port), timeout=self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.hostname)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def put(self, connection: _Connection) -> None:
        with self._lock:
            self._idle.append((connection, time.monotonic()))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.close()


# -- the publisher -------------------------------------------------------------------


@dataclass(slots=True)
class _ServerClock:
    """How far SNS's clock is from ours, learned from a skew refusal's Date header."""

    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and as whom pushes go, resolved on first use."""

    pool: _ConnectionPool
    region: str
    credentials: Any
    clock: _ServerClock = field(default_factory=_ServerClock)


@dataclass(eq=False)
class _Exchange:
    """One push in flight on one connection."""

    position: int
    connection: _Connection
    deadline: float
    answer: bytes = b""


class _PageRun:
    """One `publish` call: up to `concurrency` pushes in flight, answers as they come.

    Pushes are taken from the caller's iterable as they are needed, and ahead
    of need (up to `concurrency`, signed too) before waiting on SNS with every
    slot busy: work the caller does per push (PublishBatch renders each one)
    happens in that wait instead of before the first push or between answers.
    Taking ahead never polls for answers (a select per push): in local mode,
    where the Map's pages share one interpreter, each system call hands the
    GIL to another thread, and polling per push cost ~10 % of a whole send.
    """

    def __init__(
        self,
        target: _Target,
        pushes: Iterable[PushMessage],
        concurrency: int,
        timeout: float,
        early: EarlyOutcomes | None = None,
    ) -> None:
        self.target = target
        self.early = early
        self.url = target.pool.url
        self.source: Iterator[PushMessage] | None = iter(pushes)
        self.pushes: list[PushMessage] = []
        self.concurrency = concurrency
        self.timeout = timeout
        self.outcomes: list[PublishOutcome | None] = []
        # Taken and not started yet (or to start again), by position.
        self.waiting: deque[int] = deque()
        self.requests: dict[int, bytes] = {}
        self.in_flight: set[_Exchange] = set()
        # Pushes sent again after a clock-skew refusal (once each).
        self.skew_retried: set[int] = set()
        self.selector = selectors.DefaultSelector()

    def run(self) -> list[PublishOutcome]:
        try:
            while True:
                while len(self.in_flight) < self.concurrency and self._next_waiting():
                    self._start(self.waiting.popleft())
                if not self.in_flight:
                    break  # a free slot and nothing left to start: done
                if self.early is not None and self.source is None and not self.waiting:
                    # Every push is out. The answers of the wave before the last
                    # come in a burst: once it is over, the caller gets them while
                    # the last wave is still in flight.
                    ready = self.selector.select(EARLY_QUIET_SECONDS)
                    if not ready:
                        self._hand_over_early()
                        continue
                else:
                    # Every connection waits on SNS: take the next pushes now
                    # (rendered and signed), not when their connections free up.
                    while len(self.waiting) < self.concurrency and self._take():
                        self._request(self.waiting[-1])
                    earliest = min(exchange.deadline for exchange in self.in_flight)
                    ready = self.selector.select(max(0.0, earliest - time.monotonic()))
                for key, _ in ready:
                    self._on_readable(key.data)
                now = time.monotonic()
                for exchange in [e for e in self.in_flight if e.deadline <= now]:
                    self._fail(exchange, READ_TIMEOUT)
        finally:
            for exchange in self.in_flight:
                exchange.connection.close()
            self.selector.close()
        assert all(outcome is not None for outcome in self.outcomes)
        return self.outcomes  # type: ignore[return-value]

    def _hand_over_early(self) -> None:
        """Every push is out: the caller gets the outcomes so far while the rest fly."""
        early, self.early = self.early, None
        known = [outcome for outcome in self.outcomes if outcome is not None]
        if known and early is not None:
            early(known)

    def _take(self) -> bool:
        """One more push from the caller into `waiting`; False once there are none."""
        if self.source is None:
            return False
        push = next(self.source, None)
        if push is None:
            self.source = None
            return False
        self.waiting.append(len(self.pushes))
        self.pushes.append(push)
        self.outcomes.append(None)
        return True

    def _next_waiting(self) -> bool:
        return bool(self.waiting) or self._take()

    def _request(self, position: int) -> bytes:
        request = self.requests.get(position)
        if request is None:
            request = self.requests[position] = _signed_request(
                self.target, publish_form(self.pushes[position])
            )
        return request

    def _start(self, position: int) -> None:
        """Write the push's request on a connection (an idle one, else a new one)."""
        request = self._request(position)
        fresh_attempts = 0
        while True:
            try:
                connection = self.target.pool.get()
            except TimeoutError:
                self._outcome(position, CONNECT_TIMEOUT)
                return
            except OSError:
                self._outcome(position, CONNECT_FAILED)
                return
            try:
                connection.sock.sendall(request)
            except OSError:
                # Not written whole: SNS cannot act on a part of a request, so the
                # push goes again on another connection (a few times at most).
                connection.close()
                if not connection.answers:
                    fresh_attempts += 1
                    if fresh_attempts >= MAX_WRITE_ATTEMPTS:
                        self._outcome(position, WRITE_FAILED)
                        return
                continue
            exchange = _Exchange(position, connection, time.monotonic() + self.timeout)
            self.in_flight.add(exchange)
            self.selector.register(connection.sock, selectors.EVENT_READ, exchange)
            return

    def _on_readable(self, exchange: _Exchange) -> None:
        try:
            chunk = exchange.connection.receive()
        except TimeoutError:  # TLS: the rest of a record never came
            self._fail(exchange, READ_TIMEOUT)
            return
        except OSError:
            self._fail(exchange, CONNECTION_CLOSED)
            return
        exchange.answer += chunk
        try:
            answer = parse_http_answer(exchange.answer, closed=not chunk)
        except (_MalformedAnswer, ValueError):
            self._fail(exchange, MALFORMED_ANSWER)
            return
        if answer is not None:
            status, body, keep_alive, date = answer
            exchange.connection.answers += 1
            position = exchange.position
            if status != 200 and self._skewed(position, body, date):
                self.waiting.appendleft(position)  # signed again, with SNS's time
            else:
                push = self.pushes[position]
                self.outcomes[position] = parse_answer(push.device_id, status, body)
            if keep_alive and self._next_waiting():
                self._next_on(exchange)
            else:
                self._end(exchange, keep=keep_alive)
        elif not chunk:
            # Closed after the request was written (connections found closed are
            # not written to): SNS may have taken the push. Never sent again.
            self._fail(exchange, CONNECTION_CLOSED)

    def _skewed(self, position: int, body: bytes, date: str) -> bool:
        """A refusal for clock skew: learn SNS's time from its Date header and sign
        the push again, once (SNS refused it, so it cannot have gone)."""
        if position in self.skew_retried or answer_code(body) not in CLOCK_SKEW_CODES:
            return False
        try:
            server_time = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            return False
        offset = server_time - time.time()
        if abs(offset) < CLOCK_SKEW_SECONDS:
            return False
        self.target.clock.offset = offset
        self.skew_retried.add(position)
        self.requests.pop(position, None)
        _log.warning("SNS refused a push for clock skew of %.0f s; signing with its time", offset)
        return True

    def _next_on(self, exchange: _Exchange) -> None:
        """The next push on the connection that just answered, still registered with
        the selector: no trip through the pool, no re-registration (two system
        calls, and in local mode two hand-overs of the GIL, saved per push)."""
        position = self.waiting.popleft()
        try:
            exchange.connection.sock.sendall(self._request(position))
        except OSError:
            # Closed since it answered: the push goes on another connection.
            self._end(exchange, keep=False)
            self.waiting.appendleft(position)
            return
        exchange.position = position
        exchange.deadline = time.monotonic() + self.timeout
        exchange.answer = b""

    def _end(self, exchange: _Exchange, keep: bool) -> None:
        self.selector.unregister(exchange.connection.sock)
        self.in_flight.discard(exchange)
        if keep:
            self.target.pool.put(exchange.connection)
        else:
            exchange.connection.close()

    def _fail(self, exchange: _Exchange, failure: str) -> None:
        self._end(exchange, keep=False)
        self._outcome(exchange.position, failure)

    def _outcome(self, position: int, failure: str) -> None:
        self.outcomes[position] = classify_transport(self.pushes[position].device_id, failure)


class SnsHttpPublisher:
    """`Publisher` for SNS platform endpoints: one signed Publish per push, at most
    `concurrency` in flight per `publish` call.

    Nothing is resolved or connected until the first publish: the region and
    credentials come from botocore's session (environment, Lambda role), the
    endpoint from `resolve_endpoint`, unless given here. Safe to share between
    threads (local mode runs the Map's pages side by side).
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: Any | None = None,
        concurrency: int = 64,
        timeout: float = 10.0,
        session: Any | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._endpoint_url = endpoint_url
        self._region = region
        self._credentials = credentials
        self._session = session
        self._concurrency = concurrency
        self._timeout = timeout
        self._target: _Target | None = None
        self._lock = threading.Lock()

    def _ready(self) -> _Target:
        with self._lock:
            if self._target is None:
                self._target = self._resolve()
            return self._target

    def _resolve(self) -> _Target:
        session = self._session
        if session is None:
            import botocore.session

            session = botocore.session.get_session()
        region = self._region or session.get_config_variable("region")
        region = region or os.environ.get("AWS_REGION")
        if not region:
            raise ConfigurationError("environment variable AWS_REGION is not set")
        credentials = self._credentials or session.get_credentials()
        if credentials is None:
            raise ConfigurationError("no AWS credentials found for SNS")
        endpoint = self._endpoint_url or resolve_endpoint(session, str(region))
        return _Target(
            _ConnectionPool(endpoint, self._timeout), str(region), credentials, _ServerClock()
        )

    @property
    def endpoint_url(self) -> str:
        """The URL pushes go to (resolved on first use)."""
        return self._ready().pool.url

    def close(self) -> None:
        with self._lock:
            target, self._target = self._target, None
        if target is not None:
            target.pool.close()

    # -- publishing ------------------------------------------------------------

    def publish(
        self, pushes: Iterable[PushMessage], early: EarlyOutcomes | None = None
    ) -> list[PublishOutcome]:
        """Publish a page; outcomes in the order of `pushes` (taken as they are needed).
        `early` gets the outcomes that came once the last push is out (see `Publisher`)."""
        source = iter(pushes)
        first = next(source, None)
        if first is None:
            return []
        pushes = itertools.chain((first,), source)
        return _PageRun(self._ready(), pushes, self._concurrency, self._timeout, early).run()


def _signed_request(target: _Target, body: bytes, now: datetime.datetime | None = None) -> bytes:
    """The whole HTTP request, signed with SigV4 for SNS in the target's region."""
    # Frozen per request: a refresh between reading the key id and the secret
    # would sign with a mismatched pair.
    frozen = target.credentials.get_frozen_credentials()
    amz_date = _amz_date(int(target.clock.now())) if now is None else _format_amz_date(now)
    pool = target.pool
    canonical_head, to_sign_head, key, head = _request_parts(
        pool.host_header,
        pool.canonical_path,
        pool.path,
        target.region,
        amz_date,
        frozen.access_key,
        frozen.secret_key,
        frozen.token,
    )
    canonical = canonical_head + hashlib.sha256(body).hexdigest()
    string_to_sign = to_sign_head + hashlib.sha256(canonical.encode()).hexdigest()
    signature = hmac.digest(key, string_to_sign.encode(), "sha256").hex()
    return f"{head}{signature}\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1") + body


def _format_amz_date(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


@functools.lru_cache(maxsize=4)
def _amz_date(epoch_second: int) -> str:
    return _format_amz_date(datetime.datetime.fromtimestamp(epoch_second, datetime.UTC))


@functools.lru_cache(maxsize=16)
def _request_parts(
    host_header: str,
    canonical_path: str,
    path: str,
    region: str,
    amz_date: str,
    access_key: str,
    secret_key: str,
    token: str | None,
) -> tuple[str, str, bytes, str]:
    """What every request signed in the same second, to the same endpoint, with the
    same credentials shares: the canonical request up to its payload hash, the
    string to sign up to the canonical request's hash, the signing key, and the
    request's head up to the signature."""
    day = amz_date[:8]
    headers = [
        ("Content-Type", FORM_CONTENT_TYPE),
        ("Host", host_header),
        ("X-Amz-Date", amz_date),
    ]
    if token:
        headers.append(("X-Amz-Security-Token", token))
    signed_headers = ";".join(name.lower() for name, _ in headers)
    canonical_headers = "".join(
        f"{name.lower()}:{' '.join(value.split())}\n" for name, value in headers
    )
    canonical_head = f"POST\n{canonical_path}\n\n{canonical_headers}\n{signed_headers}\n"
    scope = f"{day}/{region}/sns/aws4_request"
    to_sign_head = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    head += (
        f"Authorization: AWS4-HMAC-SHA256 Credential={access_key}/{scope},"
        f" SignedHeaders={signed_headers}, Signature="
    )
    return canonical_head, to_sign_head, _signing_key(secret_key, day, region), head


def _signing_key(secret_key: str, day: str, region: str) -> bytes:
    """SigV4's derived key (derived once a second, with the rest of _request_parts)."""
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "sns", "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key
