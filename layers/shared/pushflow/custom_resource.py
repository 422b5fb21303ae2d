"""CloudFormation custom resources: the request, the one answer, the wrapper.

CloudFormation waits for an answer PUT to the request's presigned
`ResponseURL`; a handler that crashes or runs out of time without answering
leaves the stack waiting until the resource's ServiceTimeout. So the wrapper
answers exactly once: SUCCESS with what the handler returned, FAILED with the
error's class and message, or FAILED a few seconds before Lambda's deadline.
It never raises: CloudFormation invokes asynchronously, and a Lambda retry
would answer a request that was already answered.

The answer is written with urllib (no extra dependency). The response URL is
a credential for the answer: it is never logged.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.data_classes import CloudFormationCustomResourceEvent

from pushflow.handler import TaskHandler
from pushflow.observability import logger
from pushflow.services import Services

# CloudFormation refuses answers over 4 KiB; the reason is what a deployer reads.
MAX_REASON_CHARS = 1000
PUT_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class CustomResourceRequest:
    request_type: str  # Create, Update or Delete
    stack_id: str
    request_id: str
    logical_resource_id: str
    resource_type: str
    physical_resource_id: str | None
    properties: Mapping[str, Any]
    old_properties: Mapping[str, Any]
    response_url: str = field(repr=False)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> CustomResourceRequest:
        parsed = CloudFormationCustomResourceEvent(dict(event))
        return cls(
            request_type=parsed.request_type,
            stack_id=parsed.stack_id,
            request_id=parsed.request_id,
            logical_resource_id=parsed.logical_resource_id,
            resource_type=parsed.resource_type,
            physical_resource_id=parsed.physical_resource_id or None,
            properties=parsed.resource_properties,
            old_properties=parsed.old_resource_properties,
            response_url=parsed.response_url,
        )


@dataclass(frozen=True, slots=True)
class CustomResourceResult:
    physical_resource_id: str
    # Readable with Fn::GetAtt; values must be strings.
    data: Mapping[str, str] = field(default_factory=dict)


Put = Callable[[str, bytes], None]


def put_response(url: str, body: bytes) -> None:
    """PUT the answer to the presigned URL, retrying network errors and 5xx."""
    for attempt in range(1, PUT_ATTEMPTS + 1):
        # The URL is presigned without a content type: send an empty one.
        request = urllib.request.Request(  # noqa: S310 - the URL comes from CloudFormation
            url,
            data=body,
            method="PUT",
            headers={"Content-Type": "", "Content-Length": str(len(body))},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                response.read()
            return
        except urllib.error.HTTPError as error:
            if error.code < 500 or attempt == PUT_ATTEMPTS:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == PUT_ATTEMPTS:
                raise
        time.sleep(2**attempt / 4)


class ResponseChannel:
    """Answers one request, once, whichever of the handler and the deadline comes first."""

    def __init__(self, request: CustomResourceRequest, put: Put) -> None:
        self.request = request
        self._put = put
        self._lock = threading.Lock()
        self.status: str | None = None

    def succeed(self, result: CustomResourceResult) -> bool:
        return self._send("SUCCESS", result.physical_resource_id, dict(result.data), None)

    def fail(self, reason: str) -> bool:
        # A failed Create still needs a physical id; the Delete of the rollback gets it back.
        physical_id = self.request.physical_resource_id or f"failed-{self.request.request_id}"
        return self._send("FAILED", physical_id, {}, reason)

    def _send(
        self, status: str, physical_id: str, data: dict[str, str], reason: str | None
    ) -> bool:
        with self._lock:
            if self.status is not None:
                return False
            self.status = status
            answer: dict[str, Any] = {
                "Status": status,
                "PhysicalResourceId": physical_id,
                "StackId": self.request.stack_id,
                "RequestId": self.request.request_id,
                "LogicalResourceId": self.request.logical_resource_id,
                "Data": data,
            }
            if reason:
                answer["Reason"] = reason[:MAX_REASON_CHARS]
            body = json.dumps(answer).encode()
            try:
                self._put(self.request.response_url, body)
            except Exception:
                # Nothing else can reach CloudFormation; its ServiceTimeout ends the wait.
                logger.exception(
                    "could not send the answer to CloudFormation", extra={"status": status}
                )
                return False
        logger.info(
            "answered CloudFormation",
            extra={"status": status, "physical_resource_id": physical_id, "reason": reason},
        )
        return True


Handle = Callable[[CustomResourceRequest, Services], CustomResourceResult]


class CustomResourceHandler:
    """A Lambda entry point `(event, context)` for a custom resource.

    Logging, tracing, metrics and the function's adapters come from the same
    TaskHandler every function uses; this adds the answer to CloudFormation.
    """

    def __init__(self, handle: Handle, deadline_margin: float = 10.0, put: Put | None = None):
        self.handle = handle
        self._deadline_margin = deadline_margin
        self._put = put or put_response
        self._channel: ResponseChannel | None = None
        self._task = TaskHandler(self._run)
        functools.update_wrapper(self, handle)

    def __call__(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        channel = ResponseChannel(CustomResourceRequest.from_event(event), self._put)
        seconds_left = context.get_remaining_time_in_millis() / 1000 - self._deadline_margin
        deadline = threading.Timer(
            max(seconds_left, 0.0),
            channel.fail,
            args=("timed out before finishing; see the function's log group",),
        )
        deadline.daemon = True
        self._channel = channel
        deadline.start()
        try:
            self._task(dict(event), context)
        except Exception as error:  # raised before the handler ran (configuration, adapters)
            logger.exception("custom resource could not start")
            channel.fail(f"{type(error).__name__}: {error}")
        finally:
            deadline.cancel()
            self._channel = None
        return {"Status": channel.status}

    def _run(self, event: Mapping[str, Any], services: Services) -> None:
        channel = self._channel
        assert channel is not None, "called outside CustomResourceHandler.__call__"
        request = channel.request
        logger.append_keys(
            custom_resource=request.logical_resource_id, request_type=request.request_type
        )
        logger.info("custom resource request", extra={"properties": dict(request.properties)})
        try:
            result = self.handle(request, services)
        except Exception as error:
            logger.exception("custom resource failed")
            channel.fail(f"{type(error).__name__}: {error}")
            return
        channel.succeed(result)


def custom_resource(handle: Handle) -> CustomResourceHandler:
    return CustomResourceHandler(handle)
