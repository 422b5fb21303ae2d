"""Configuration read once from the environment, and the SNS client it picks."""

from __future__ import annotations

import pytest

from pushflow.adapters.sns import SnsPublisher
from pushflow.adapters.sns_http import SnsHttpPublisher
from pushflow.config import ConfigurationError, Settings
from pushflow.services import Services

pytestmark = pytest.mark.unit

BASE = {"DATABASE_URL": "postgresql://pushflow@localhost/pushflow", "REDIS_URL": "redis://x"}


def test_deployed_functions_publish_through_the_signed_http_client() -> None:
    services = Services(Settings.from_env(BASE))

    assert services.settings.sns_client == "http"
    assert isinstance(services.publisher, SnsHttpPublisher)


def test_boto3_can_be_chosen_where_a_mock_of_botocore_must_see_the_pushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # boto3 builds its client now
    settings = Settings.from_env({**BASE, "SNS_CLIENT": "BOTO3"})

    assert isinstance(Services(settings).publisher, SnsPublisher)


def test_an_unknown_sns_client_is_refused_at_cold_start_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="SNS_CLIENT must be one of http, boto3"):
        Settings.from_env({**BASE, "SNS_CLIENT": "carrier-pigeon"})


def test_a_function_given_no_redis_url_nor_secret_is_told_which_variables_to_set() -> None:
    # Functions that do not use Redis have neither: only asking for the URL fails.
    settings = Settings.from_env({"DATABASE_URL": BASE["DATABASE_URL"]})

    with pytest.raises(ConfigurationError, match="set REDIS_URL, or REDIS_SECRET_ARN"):
        _ = settings.redis_url
