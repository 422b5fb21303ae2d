"""PlanDeferred: plan the next pass over recipients deferred by quiet hours."""

from __future__ import annotations

from typing import Any

from pushflow.domain import sending
from pushflow.event_shapes import require
from pushflow.handler import task
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "PlanDeferred", notification_id=(str, type(None)), execution_arn=str)
    return sending.plan_deferred(
        event,
        services.repository,
        services.page_plans,
        configured_page_size=services.settings.page_size,
    )
