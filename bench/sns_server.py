"""A stand-in for SNS's Publish API that answers after a fixed delay (20 ms by default).

The delay counts from the request's arrival (its request line read), so the
server's own parsing is inside the 20 ms, not added to it.

It runs in its own process (`SlowSns.start()`), so its CPU does not compete
with the client being measured, as SNS's does not. HTTP/1.1 with keep-alive,
one thread per connection. GET /stats answers how many publishes it took.

    python -m bench.sns_server --port 0 --delay 0.02   # prints the port, serves until killed
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

_ANSWER = (
    '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
    "<PublishResult><MessageId>{message_id}</MessageId></PublishResult>"
    "<ResponseMetadata><RequestId>{message_id}</RequestId></ResponseMetadata>"
    "</PublishResponse>"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], delay: float) -> None:
        super().__init__(address, _PublishHandler)
        self.delay = delay
        self.counter = itertools.count(1)
        self.published = 0


class _PublishHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK would add ~40 ms to each answer.
    disable_nagle_algorithm = True
    server: _Server
    arrived = 0.0  # when the request being answered arrived (time.monotonic)

    def parse_request(self) -> bool:
        # The request line has just been read: the request arrived now. The
        # answer leaves `delay` after this, not after this server's own parsing.
        self.arrived = time.monotonic()
        return super().parse_request()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        time.sleep(max(0.0, self.arrived + self.server.delay - time.monotonic()))
        number = next(self.server.counter)
        self.server.published = number
        body = _ANSWER.format(message_id=f"00000000-0000-4000-8000-{number:012d}").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        body = json.dumps({"published": self.server.published}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


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
    server = _Server(("127.0.0.1", args.port), args.delay)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
