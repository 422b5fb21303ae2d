"""Configuration read once from the environment, and where SNS pushes go."""

from __future__ import annotations

import pytest

from pushflow.adapters.sns_http import SnsHttpPublisher
from pushflow.config import ConfigurationError, Settings
from pushflow.services import Services

pytestmark = pytest.mark.unit

BASE = {"DATABASE_URL": "postgresql://pushflow@localhost/pushflow", "REDIS_URL": "redis://x"}


def test_deployed_functions_publish_through_the_signed_http_client_to_the_resolved_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_SNS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    services = Services(Settings.from_env(BASE))

    assert services.settings.sns_publish_endpoint_url is None
    assert isinstance(services.publisher, SnsHttpPublisher)
    assert services.publisher.endpoint_url == "https://sns.eu-west-1.amazonaws.com/"


def test_a_function_given_no_redis_url_nor_secret_is_told_which_variables_to_set() -> None:
    # Functions that do not use Redis have neither: only asking for the URL fails.
    settings = Settings.from_env({"DATABASE_URL": BASE["DATABASE_URL"]})

    with pytest.raises(ConfigurationError, match="set REDIS_URL, or REDIS_SECRET_ARN"):
        _ = settings.redis_url


def test_local_mode_points_the_same_publisher_at_a_stand_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    settings = Settings.from_env({**BASE, "SNS_PUBLISH_ENDPOINT_URL": "http://127.0.0.1:4575/"})

    publisher = Services(settings).publisher
    assert isinstance(publisher, SnsHttpPublisher)
    assert publisher.endpoint_url == "http://127.0.0.1:4575/"


def test_a_publish_endpoint_that_is_not_a_url_is_refused_at_cold_start_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="SNS_PUBLISH_ENDPOINT_URL must be an http"):
        Settings.from_env({**BASE, "SNS_PUBLISH_ENDPOINT_URL": "sns.local:4575"})
