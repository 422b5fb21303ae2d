"""Stand-ins for CloudFormation's side of a custom resource, for the tests.

CloudFormation hands the function a presigned S3 URL and waits for a PUT
there. `AnswerInbox` is a real HTTP server on localhost taking those PUTs, so
the tests exercise the real answer (urllib, headers, JSON body).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pushflow_local.runtime import LambdaContext
from tests.conftest import load_event


class AnswerInbox:
    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failures_to_serve = 0
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if inbox.failures_to_serve > 0:
                    inbox.failures_to_serve -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                inbox.headers.append(dict(self.headers.items()))
                inbox.answers.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/cloudformation-response?X-Amz-Signature=example"

    def __enter__(self) -> AnswerInbox:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def only_answer(self) -> dict[str, Any]:
        assert len(self.answers) == 1, f"CloudFormation got {len(self.answers)} answers"
        return self.answers[0]


def inbox() -> Iterator[AnswerInbox]:
    with AnswerInbox() as answers:
        yield answers


def request_event(sample: str, response_url: str, **changes: Any) -> dict[str, Any]:
    """A sample custom resource event (events/), answering to `response_url`."""
    event: dict[str, Any] = copy.deepcopy(load_event(sample))
    event["ResponseURL"] = response_url
    event["RequestId"] = str(uuid.uuid4())
    properties = changes.pop("properties", None)
    if properties:
        event["ResourceProperties"] = {**event["ResourceProperties"], **properties}
    event.update(changes)
    return event


def context(name: str, seconds: float = 60.0) -> LambdaContext:
    return LambdaContext(
        name,
        f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        deadline=time.monotonic() + seconds,
    )
