"""SNS platform endpoints: created, refreshed and deleted through boto3.

Publishing is `adapters/sns_http.py`'s (signed requests over kept-alive
connections, one publisher deployed and local alike).
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError

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
