"""Configuration: read from the environment once, validated at cold start.

Deployed, the database is named by host/port/name and its credentials live
in Secrets Manager (DATABASE_SECRET_ARN), and the functions that use Redis
read its URL, which may carry a password, from a secret (REDIS_SECRET_ARN).
Locally, or against any other server, DATABASE_URL and REDIS_URL name the
servers directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from pushflow.domain.errors import TransientStoreError

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")


class ConfigurationError(RuntimeError):
    """A required variable is missing or malformed; names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    database_host: str | None
    database_port: int
    database_name: str
    database_secret_arn: str | None
    # REDIS_URL as given; deployed it is unset and redis_secret_arn names the secret.
    redis_url_variable: str | None
    redis_secret_arn: str | None
    page_size: int
    page_plan_bucket: str | None
    map_concurrency: int
    publish_concurrency: int
    # Where Publish requests go; unset (deployed), botocore resolves the regional
    # endpoint. Not AWS_ENDPOINT_URL_SNS: endpoint management (boto3) follows that.
    sns_publish_endpoint_url: str | None
    state_machine_arn: str | None
    apns_platform_application_arn: str | None
    apns_sandbox_platform_application_arn: str | None
    fcm_platform_application_arn: str | None
    schedule_group: str | None
    scheduler_role_arn: str | None
    schedule_dlq_arn: str | None
    min_recurrence_minutes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def required(name: str) -> str:
            value = text(name)
            if value is None:
                raise ConfigurationError(f"environment variable {name} is not set")
            return value

        def number(name: str, default: int, low: int, high: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
            if not low <= value <= high:
                raise ConfigurationError(f"{name} must be between {low} and {high}, got {value}")
            return value

        def url(name: str) -> str | None:
            value = text(name)
            if value is not None and not value.startswith(("http://", "https://")):
                raise ConfigurationError(f"{name} must be an http(s) URL, got {value!r}")
            return value

        database_url = text("DATABASE_URL")
        if database_url is None and text("DATABASE_HOST") is None:
            raise ConfigurationError("set DATABASE_URL, or DATABASE_HOST with DATABASE_SECRET_ARN")
        return cls(
            database_url=database_url,
            database_host=text("DATABASE_HOST"),
            database_port=number("DATABASE_PORT", 5432, 1, 65535),
            database_name=text("DATABASE_NAME") or "pushflow",
            database_secret_arn=text("DATABASE_SECRET_ARN"),
            redis_url_variable=text("REDIS_URL"),
            redis_secret_arn=text("REDIS_SECRET_ARN"),
            page_size=number("PAGE_SIZE", 500, 10, 1000),
            page_plan_bucket=text("PAGE_PLAN_BUCKET"),
            map_concurrency=number("MAP_CONCURRENCY", 40, 1, 10000),
            publish_concurrency=number("PUBLISH_CONCURRENCY", 32, 1, 256),
            sns_publish_endpoint_url=url("SNS_PUBLISH_ENDPOINT_URL"),
            state_machine_arn=text("STATE_MACHINE_ARN"),
            apns_platform_application_arn=text("APNS_PLATFORM_APPLICATION_ARN"),
            apns_sandbox_platform_application_arn=text("APNS_SANDBOX_PLATFORM_APPLICATION_ARN"),
            fcm_platform_application_arn=text("FCM_PLATFORM_APPLICATION_ARN"),
            schedule_group=text("SCHEDULE_GROUP"),
            scheduler_role_arn=text("SCHEDULER_ROLE_ARN"),
            schedule_dlq_arn=text("SCHEDULE_DLQ_ARN"),
            min_recurrence_minutes=number("MIN_RECURRENCE_MINUTES", 60, 1, 10080),
        )

    @property
    def redis_url(self) -> str:
        """REDIS_URL, or deployed the URL in the secret REDIS_SECRET_ARN names.

        Read when the Redis client is built (once per process, at the first
        invocation that needs it), never at import time; Powertools caches it.
        """
        if self.redis_url_variable:
            return self.redis_url_variable
        if not self.redis_secret_arn:
            raise ConfigurationError(
                "set REDIS_URL, or REDIS_SECRET_ARN naming the secret that holds the Redis URL"
            )
        from aws_lambda_powertools.utilities import parameters
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            url = str(parameters.get_secret(self.redis_secret_arn, max_age=300)).strip()
        except GetParameterError as error:
            # Throttling or a network blip at cold start: the ASL retries this by name.
            raise TransientStoreError(
                f"cannot read the Redis URL from REDIS_SECRET_ARN "
                f"({self.redis_secret_arn}): {error}"
            ) from error
        if not url.startswith(REDIS_URL_SCHEMES):
            # Never echo the value: it may carry a password.
            raise ConfigurationError(
                f"the secret REDIS_SECRET_ARN names ({self.redis_secret_arn}) does not hold a "
                f"Redis URL ({', '.join(REDIS_URL_SCHEMES)})"
            )
        return url

    def require(self, name: str) -> str:
        """A setting this function cannot work without (e.g. the bucket for Prepare)."""
        value = getattr(self, name)
        if not value:
            raise ConfigurationError(f"environment variable {name.upper()} is not set")
        return str(value)
