"""PublishBatch: publish one page to SNS, each device once (as its category's policy says)."""

from __future__ import annotations

from typing import Any

from pushflow.domain import sending
from pushflow.event_shapes import require, require_page
from pushflow.handler import deadline, task
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "PublishBatch", notification_id=str, recipients=list)
    require_page(event, "PublishBatch")
    return sending.publish(
        event,
        services.repository,
        services.repository,
        services.publisher,
        deadline(),
        markers=services.store,
        now=services.clock.now(),
    )
