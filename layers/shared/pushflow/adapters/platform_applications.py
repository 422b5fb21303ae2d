"""SNS platform applications for APNs (token key) and FCM HTTP v1, from secrets.

CloudFormation has no resource type for a platform application, so a custom
resource creates one from a Secrets Manager secret:

- APNs (token-based): a JSON secret with `signing_key` (the .p8 file's text),
  `key_id`, `team_id` and `bundle_id`. The same key serves APNS and APNS_SANDBOX.
- FCM HTTP v1: the Firebase service-account JSON file, as the secret's value.

Every application sends its endpoint events (updated, deleted, delivery
failure) to the stack's token-events topic. Credentials are read here and
handed to SNS; they are never logged, returned or put in an error message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

from pushflow.domain.errors import InvalidRequest

PLATFORMS = ("APNS", "APNS_SANDBOX", "GCM")
APNS_SECRET_KEYS = ("signing_key", "key_id", "team_id", "bundle_id")
EVENT_ATTRIBUTES = ("EventEndpointUpdated", "EventEndpointDeleted", "EventDeliveryFailure")

ReadSecret = Callable[[str], str]


def credential_attributes(platform: str, secret_text: str) -> dict[str, str]:
    """The platform application attributes a secret's value stands for."""
    if platform not in PLATFORMS:
        raise InvalidRequest(f"unsupported platform {platform!r}; one of {', '.join(PLATFORMS)}")
    try:
        secret: Any = json.loads(secret_text)
    except ValueError:
        raise InvalidRequest(f"the {platform} secret is not JSON") from None
    if not isinstance(secret, dict):
        raise InvalidRequest(f"the {platform} secret is not a JSON object")
    if platform == "GCM":
        missing = [
            k for k in ("type", "project_id", "private_key", "client_email") if k not in secret
        ]
        if missing or secret.get("type") != "service_account":
            raise InvalidRequest(
                "the FCM secret must be a Firebase service-account JSON file"
                + (f" (missing {', '.join(missing)})" if missing else "")
            )
        # FCM HTTP v1: no principal; the credential is the whole service-account file.
        return {"PlatformCredential": secret_text}
    missing = [k for k in APNS_SECRET_KEYS if not str(secret.get(k, "")).strip()]
    if missing:
        raise InvalidRequest(f"the APNs secret lacks {', '.join(missing)}")
    if "PRIVATE KEY" not in secret["signing_key"]:
        raise InvalidRequest("the APNs signing_key must be the text of the .p8 file")
    # Token-based APNs: the principal is the signing key id, the credential the key.
    return {
        "PlatformCredential": secret["signing_key"],
        "PlatformPrincipal": secret["key_id"],
        "ApplePlatformTeamID": secret["team_id"],
        "ApplePlatformBundleID": secret["bundle_id"],
    }


def event_attributes(topic_arn: str) -> dict[str, str]:
    return dict.fromkeys(EVENT_ATTRIBUTES, topic_arn)


class PlatformApplications:
    def __init__(self, sns_client: Any, read_secret: ReadSecret) -> None:
        self._sns = sns_client
        self._read_secret = read_secret

    def _attributes(self, spec: Mapping[str, Any]) -> dict[str, str]:
        platform = str(spec["Platform"])
        attributes = credential_attributes(
            platform, self._read_secret(spec["CredentialsSecretArn"])
        )
        if spec.get("EventTopicArn"):
            attributes.update(event_attributes(str(spec["EventTopicArn"])))
        return attributes

    def create(self, spec: Mapping[str, Any]) -> str:
        response = self._sns.create_platform_application(
            Name=str(spec["Name"]),
            Platform=str(spec["Platform"]),
            Attributes=self._attributes(spec),
        )
        return str(response["PlatformApplicationArn"])

    def update(self, arn: str, spec: Mapping[str, Any]) -> None:
        """New credentials (a rotated secret) or another event topic, same application."""
        self._sns.set_platform_application_attributes(
            PlatformApplicationArn=arn, Attributes=self._attributes(spec)
        )

    def delete(self, arn: str) -> None:
        """Delete the application (SNS deletes its endpoints with it); gone already is fine."""
        try:
            self._sns.delete_platform_application(PlatformApplicationArn=arn)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NotFound", "NotFoundException"):
                raise
