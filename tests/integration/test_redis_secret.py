"""Deployed, the functions that use Redis find its URL in Secrets Manager (REDIS_SECRET_ARN),
never in their environment: read through Powertools, against moto and the session's Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pushflow.config import ConfigurationError, Settings
from pushflow.domain.errors import TransientStoreError
from pushflow.services import Services

pytestmark = pytest.mark.integration


def deployed_settings(secret_arn: str) -> Settings:
    """What a deployed Redis function's environment gives: a database and the secret's ARN."""
    return Settings.from_env(
        {
            "DATABASE_HOST": "proxy.example.internal",
            "DATABASE_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db",
            "REDIS_SECRET_ARN": secret_arn,
        }
    )


def create_secret(runtime: Any, value: str) -> str:
    secrets = runtime.client("secretsmanager")
    arn: str = secrets.create_secret(Name=f"redis-url-{uuid.uuid4()}", SecretString=value)["ARN"]
    return arn


def test_a_function_reaches_redis_through_the_url_in_the_secret(runtime: Any) -> None:
    # GIVEN a secret holding the Redis URL, and no REDIS_URL in the environment
    settings = deployed_settings(create_secret(runtime, runtime.servers.redis_url))
    assert settings.redis_url_variable is None
    services = Services(settings)
    try:
        # WHEN the function first uses the store
        client = services.store.client
        key = f"pf:{{t:{uuid.uuid4()}}}:probe"
        client.set(key, "reached", ex=60)
        # THEN it talks to the server the secret names
        assert runtime.services.store.client.get(key) == "reached"
    finally:
        services.close()


def test_a_secret_that_holds_no_redis_url_is_refused_without_echoing_it(runtime: Any) -> None:
    arn = create_secret(runtime, "hunter2-not-a-url")
    with pytest.raises(ConfigurationError, match="REDIS_SECRET_ARN") as raised:
        _ = deployed_settings(arn).redis_url
    assert "hunter2" not in str(raised.value)


def test_an_unreadable_secret_is_a_transient_store_error_the_asl_retries(runtime: Any) -> None:
    missing = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:gone-{uuid.uuid4()}"
    with pytest.raises(TransientStoreError, match="REDIS_SECRET_ARN"):
        _ = deployed_settings(missing).redis_url


def test_redis_url_in_the_environment_wins_for_local_mode_and_other_servers() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://pushflow@localhost/pushflow",
            "REDIS_URL": "redis://cache.example:6379",
            "REDIS_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:never-read",
        }
    )
    assert settings.redis_url == "redis://cache.example:6379"
