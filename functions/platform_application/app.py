"""PlatformApplicationFunction: the Custom::PlatformApplication resources.

Create makes an SNS platform application from the APNs or FCM secret, Update
reads the secret again into it (after a rotation, bump PlatformKeysRevision),
Delete removes it. A new Name or Platform means a new application, so
CloudFormation replaces it (and SNS deletes the old one's endpoints).
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools.utilities import parameters

from pushflow.adapters.platform_applications import PlatformApplications
from pushflow.custom_resource import CustomResourceRequest, CustomResourceResult, custom_resource
from pushflow.services import Services

REPLACING_PROPERTIES = ("Name", "Platform")


def _read_secret(arn: str) -> str:
    # Always fresh: a deploy after a rotation must see the new value.
    value: Any = parameters.get_secret(arn, force_fetch=True)
    return value.decode() if isinstance(value, bytes) else str(value)


def manage_application(
    request: CustomResourceRequest,
    services: Services,
    applications: PlatformApplications | None = None,
) -> CustomResourceResult:
    applications = applications or PlatformApplications(boto3.client("sns"), _read_secret)
    arn = request.physical_resource_id or ""
    is_application = ":app/" in arn
    if request.request_type == "Delete":
        if is_application:
            applications.delete(arn)
        return CustomResourceResult(arn or request.logical_resource_id)
    replaced = any(
        request.properties.get(name) != request.old_properties.get(name)
        for name in REPLACING_PROPERTIES
    )
    if request.request_type == "Update" and is_application and not replaced:
        applications.update(arn, request.properties)
    else:
        arn = applications.create(request.properties)
    return CustomResourceResult(arn, {"Arn": arn})


lambda_handler = custom_resource(manage_application)
