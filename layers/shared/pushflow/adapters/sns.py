"""The SNS publisher: one Publish per platform endpoint, bounded concurrency.

SNS's PublishBatch takes topics only, so a page is published endpoint by
endpoint on a small thread pool. Each answer is classified into what the send
does next: sent, endpoint disabled, retry later (throttled or a 5xx), or a
permanent failure with its error code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pushflow.domain.publishing import EarlyOutcomes, PublishOutcome, PublishStatus, PushMessage

_THROTTLED = frozenset({"Throttling", "ThrottlingException", "ThrottledException", "KMSThrottling"})
_ENDPOINT_GONE = frozenset({"EndpointDisabled"})
_RETRYABLE = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable"})


def classify(device_id: int, error: Exception) -> PublishOutcome:
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "Unknown"))
        status_code = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _ENDPOINT_GONE:
            return PublishOutcome(device_id, PublishStatus.ENDPOINT_DISABLED, error=code)
        if code in _THROTTLED or status_code == 429:
            return PublishOutcome(device_id, PublishStatus.THROTTLED, error=code)
        if code in _RETRYABLE or status_code >= 500:
            return PublishOutcome(device_id, PublishStatus.RETRYABLE, error=code)
        return PublishOutcome(device_id, PublishStatus.FAILED, error=code)
    if isinstance(error, BotoCoreError | ConnectionError | TimeoutError):
        return PublishOutcome(device_id, PublishStatus.RETRYABLE, error=type(error).__name__)
    raise error


class SnsPublisher:
    def __init__(self, client: Any, concurrency: int = 32) -> None:
        self._client = client
        self._concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="publish")
        return self._pool

    def _publish_one(self, push: PushMessage) -> PublishOutcome:
        try:
            response = self._client.publish(
                TargetArn=push.endpoint_arn,
                Message=push.message,
                MessageStructure="json",
                MessageAttributes=dict(push.attributes),
            )
        except Exception as error:
            return classify(push.device_id, error)
        return PublishOutcome(push.device_id, PublishStatus.SENT, message_id=response["MessageId"])

    def publish(
        self, pushes: Iterable[PushMessage], early: EarlyOutcomes | None = None
    ) -> list[PublishOutcome]:
        """Publish a page; outcomes in the order of `pushes`.

        `early` gets the outcomes that came once the page's last push has started
        (all but a pool's width answered), or halfway for a page no wider than
        the pool (its pushes all start at once): see `Publisher.publish`.
        """
        pool = self._executor()
        futures = [pool.submit(self._publish_one, push) for push in pushes]
        if early is not None and len(futures) > 1:
            answered = 0
            enough = max(len(futures) - self._concurrency, (len(futures) + 1) // 2)
            for _ in as_completed(futures):
                answered += 1
                if answered >= enough:
                    break
            if answered < len(futures):
                early([future.result() for future in futures if future.done()])
        return [future.result() for future in futures]

    # -- endpoints (device registration) ----------------------------------

    def create_endpoint(self, platform_application_arn: str, token: str, user_data: str) -> str:
        response = self._client.create_platform_endpoint(
            PlatformApplicationArn=platform_application_arn,
            Token=token,
            CustomUserData=user_data,
        )
        return str(response["EndpointArn"])


_EXISTING_ENDPOINT = re.compile(r"(arn:aws[\w-]*:sns:[\w-]+:\d{12}:endpoint/[\w/.-]+)")


class EndpointRegistry:
    """SNS platform endpoints for device tokens (registration, refresh, removal)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def ensure(
        self, application_arn: str, token: str, user_data: str, existing_arn: str | None
    ) -> str:
        """The endpoint for this token, enabled and carrying the token again.

        CreatePlatformEndpoint is idempotent for the same token and attributes;
        when an endpoint exists with other attributes SNS names it only in its
        error message (AWS documents parsing it), and it is updated instead.
        """
        if existing_arn and self._refresh(existing_arn, token, user_data):
            return existing_arn
        try:
            response = self._client.create_platform_endpoint(
                PlatformApplicationArn=application_arn, Token=token, CustomUserData=user_data
            )
            arn = str(response["EndpointArn"])
        except ClientError as error:
            found = _EXISTING_ENDPOINT.search(str(error.response.get("Error", {}).get("Message")))
            if error.response.get("Error", {}).get("Code") != "InvalidParameter" or not found:
                raise
            arn = found.group(1)
        self._refresh(arn, token, user_data)
        return arn

    def _refresh(self, arn: str, token: str, user_data: str) -> bool:
        try:
            self._client.set_endpoint_attributes(
                EndpointArn=arn,
                Attributes={"Token": token, "Enabled": "true", "CustomUserData": user_data},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "NotFound":
                return False
            raise
        return True

    def delete(self, arn: str) -> None:
        # Deleting an endpoint that is already gone succeeds in SNS.
        self._client.delete_endpoint(EndpointArn=arn)
