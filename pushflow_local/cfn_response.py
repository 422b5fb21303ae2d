"""Where a custom resource's answer goes locally.

Deployed, a custom resource PUTs its answer to the presigned S3 URL in the
request's `ResponseURL`, where CloudFormation waits for it. A sample event's
URL is an example of the real one: locally the answer must not go there. This
stand-in takes the PUT on localhost, keeps the answer, and lets the command
show what CloudFormation would have received. Only `pushflow invoke` uses it;
the function's own code (which PUTs with urllib) is the code that deploys.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def is_custom_resource_request(event: Any) -> bool:
    return isinstance(event, Mapping) and "ResponseURL" in event and "RequestType" in event


class _Recorder(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            self.server.answers.append(json.loads(body))
        except ValueError:
            self.server.answers.append({"unreadable": body.decode("utf-8", "replace")})
        # What S3 answers a presigned PUT with.
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    answers: list[Any]


class ResponseUrlStandIn:
    """`with ResponseUrlStandIn() as cfn: event = cfn.redirect(event) ... cfn.answers`."""

    def __init__(self) -> None:
        self._server = _RecordingServer(("127.0.0.1", 0), _Recorder)
        self._server.answers = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def answers(self) -> list[Any]:
        return self._server.answers

    def redirect(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The event with its ResponseURL pointing here (the rest as it was)."""
        host, port = self._server.server_address[:2]
        return {**event, "ResponseURL": f"http://{host!s}:{port}/cloudformation-response"}

    def __enter__(self) -> ResponseUrlStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
