"""The local API Gateway's HTTP side: whatever arrives on the socket, an answer in
API Gateway's JSON shape; bursts queue instead of being reset; requests run at once.

Requests are written byte by byte on a raw socket, so framing faults (which an
HTTP client library would refuse to send) reach the server as written.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest

from pushflow_local.runtime import LocalRuntime
from pushflow_local.server import LocalApiServer
from tests.e2e.test_api import Answer, Client, assert_error

pytestmark = pytest.mark.e2e

TIMEOUT = 20


def _address(api: LocalApiServer) -> tuple[str, int]:
    parts = urlsplit(api.url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def raw_exchange(api: LocalApiServer, request: bytes, *, half_close: bool = False) -> Answer:
    """Write `request` as is; read the answer until the server closes the connection."""
    with socket.create_connection(_address(api), timeout=TIMEOUT) as connection:
        connection.sendall(request)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    return Answer(status, headers, body)


def _head(method: str, path: str, api: LocalApiServer, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {_address(api)[0]}", *extra, "", ""]
    return "\r\n".join(lines).encode("latin-1")


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND"])
def test_methods_no_route_takes_get_api_gateways_json(api: LocalApiServer, method: str) -> None:
    answer = raw_exchange(
        api, _head(method, "/api/health", api, "Connection: close", "Content-Length: 0")
    )
    assert_error(answer, 404, "not_found")
    assert "werkzeug" not in json.dumps(answer.headers).lower()


def test_a_bad_chunk_size_is_answered_400_in_json(api: LocalApiServer) -> None:
    request = _head(
        "PUT",
        "/api/v1/users/chunky",
        api,
        f"x-api-key: {api.api_key}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    )
    answer = raw_exchange(api, request + b"zz\r\n{}\r\n0\r\n\r\n")
    assert_error(answer, 400)


def test_a_valid_chunked_body_is_taken(api: LocalApiServer) -> None:
    body = b'{"locale": "de-AT"}'
    request = _head(
        "PUT",
        "/api/v1/users/chunked-user",
        api,
        f"x-api-key: {api.api_key}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        "Connection: close",
    )
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    answer = raw_exchange(api, request + chunked)
    assert answer.status in (200, 201), answer.raw
    assert answer.body["locale"] == "de-AT"


@pytest.mark.parametrize(
    ("length", "sent"), [("-1", b"{}"), ("abc", b"{}"), ("1e3", b"{}"), ("50", b"{}")]
)
def test_a_broken_content_length_is_answered_400_in_json(
    api: LocalApiServer, length: str, sent: bytes
) -> None:
    request = _head(
        "PUT",
        "/api/v1/users/framed",
        api,
        f"x-api-key: {api.api_key}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
    )
    # The client sends what it has and stops writing: a short body ends here.
    answer = raw_exchange(api, request + sent, half_close=True)
    assert_error(answer, 400)


def test_a_malformed_request_line_is_answered_in_json(api: LocalApiServer) -> None:
    answer = raw_exchange(api, b"GARBAGE\r\n\r\n")
    assert 400 <= answer.status < 500
    assert answer.headers.get("content-type", "").startswith("application/json")
    assert isinstance(answer.body.get("message"), str)


def test_a_burst_of_connections_all_get_answers(api: LocalApiServer) -> None:
    # Far more clients at once than the old listen backlog of 5: none may be reset.
    client = Client(api)

    def health(_: int) -> int:
        return client.request("GET", "/health").status

    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(health, range(256)))
    assert statuses == [200] * 256


def test_function_calls_are_not_serialized(
    api: LocalApiServer, runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN ApiFunction calls that each wait until two of them are running at once
    both_running = threading.Barrier(2, timeout=TIMEOUT)
    original = runtime.invoke

    def waits_for_the_other(logical_id: str, event: Any) -> Any:
        both_running.wait()  # a lock around every call would make this time out
        return original(logical_id, event)

    monkeypatch.setattr(runtime, "invoke", waits_for_the_other)
    client = Client(api)
    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = list(pool.map(lambda _: client.request("GET", "/health").status, range(2)))
    # THEN both are answered by ApiFunction (a broken barrier would have made them 500s)
    assert statuses == [200, 200]


def test_an_api_key_in_the_query_string_is_not_logged(
    api: LocalApiServer, server_log: io.StringIO
) -> None:
    start = len(server_log.getvalue())
    secret = "query-secret-0123456789"
    Client(api).request("GET", f"/v1/schedules?limit=5&api_key={secret}", backend=True)
    logged = server_log.getvalue()[start:]
    assert "/api/v1/schedules?" in logged, logged
    assert "limit=5" in logged  # parameters the document declares stay readable
    assert secret not in logged
