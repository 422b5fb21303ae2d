"""A stand-in for SNS's Publish API that answers after a fixed delay (20 ms by default).

The delay counts from the request's arrival (its first bytes read), so the
server's own work is inside the 20 ms, not added to it.

It runs in its own process (`SlowSns.start()`), so its CPU does not compete
with the client being measured, as SNS's does not. HTTP/1.1 with keep-alive.
GET /stats answers how many publishes it took.

One thread serves every connection from a selector and a heap of answers
due: a wave of 64 requests costs it a few hundred microseconds. (http.server
with a thread per connection spent ~150 µs of CPU a request and its 64 threads
took turns at one interpreter lock, so a wave's answers left up to ~7 ms late:
the stand-in, not the client, set the pace.)

    python -m bench.sns_server --port 0 --delay 0.02   # prints the port, serves until killed
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import IO

_ANSWER = (
    '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
    "<PublishResult><MessageId>{message_id}</MessageId></PublishResult>"
    "<ResponseMetadata><RequestId>{message_id}</RequestId></ResponseMetadata>"
    "</PublishResponse>"
)
_NOT_PUBLISH = (
    '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
    "<Error><Type>Sender</Type><Code>InvalidAction</Code>"
    "<Message>this stand-in answers Publish only</Message></Error>"
    "<RequestId>00000000-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
)
# selectors' epoll and poll round a timeout up to the millisecond: wake this
# much early and sleep the rest, so answers do not leave up to 1 ms late.
_WAKE_EARLY = 0.001


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    buffer: bytes = b""
    arrived: float = 0.0  # when the request in `buffer` began to arrive


@dataclass(order=True)
class _Due:
    when: float
    order: int
    connection: _Connection = field(compare=False)
    answer: bytes = field(compare=False)
    close: bool = field(compare=False)


def _http_answer(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class Server:
    def __init__(self, port: int, delay: float) -> None:
        self.delay = delay
        self.published = 0
        self._listener = socket.create_server(("127.0.0.1", port), backlog=512)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._due: list[_Due] = []
        self._order = itertools.count()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def serve_forever(self) -> None:
        while True:
            for key, _ in self._selector.select(self._timeout()):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            self._answer_due()

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
        if not connection.buffer:
            connection.arrived = time.monotonic()
        connection.buffer += chunk
        # Requests sent back to back count from when the first of them arrived.
        while self._request(connection):
            pass

    def _request(self, connection: _Connection) -> bool:
        """Queue the answer to the first whole request in the buffer; False if none."""
        buffer = connection.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = buffer[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        length = int(headers.get("content-length") or 0)
        if len(buffer) < start + length:
            return False
        body, connection.buffer = buffer[start : start + length], buffer[start + length :]
        if lines[0].startswith("POST "):
            when = connection.arrived + self.delay
            if b"Action=Publish&" in body:
                self.published += 1
                message_id = f"00000000-0000-4000-8000-{self.published:012d}"
                answer = _http_answer(
                    "200 OK", "text/xml", _ANSWER.format(message_id=message_id).encode()
                )
            else:
                answer = _http_answer("400 Bad Request", "text/xml", _NOT_PUBLISH.encode())
        else:
            when = 0.0
            stats = json.dumps({"published": self.published}).encode()
            answer = _http_answer("200 OK", "application/json", stats)
        close = headers.get("connection", "").lower() == "close"
        heapq.heappush(self._due, _Due(when, next(self._order), connection, answer, close))
        return True

    def _answer_due(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0].when <= now:
            due = heapq.heappop(self._due)
            try:
                due.connection.sock.sendall(due.answer)
            except OSError:
                due.close = True
            if due.close:
                self._close(due.connection)

    def _close(self, connection: _Connection) -> None:
        if connection.sock.fileno() >= 0:
            self._selector.unregister(connection.sock)
            connection.sock.close()


class SlowSns:
    """The server in a child process; a context manager that stops it on exit."""

    def __init__(self, delay: float = 0.020) -> None:
        self.delay = delay
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SlowSns:
        command = [sys.executable, "-m", "bench.sns_server", "--port", "0"]
        command += ["--delay", str(self.delay)]
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

    def published(self) -> int:
        with urllib.request.urlopen(self.url + "stats", timeout=5) as answer:  # noqa: S310
            return int(json.load(answer)["published"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.020)
    args = parser.parse_args()
    server = Server(args.port, args.delay)
    print(server.port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
