"""PublishBatch: publish one page to SNS, each device at most once."""

from __future__ import annotations

from typing import Any

from pushflow.domain import sending
from pushflow.event_shapes import require
from pushflow.handler import task
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "PublishBatch", notification_id=str, page=dict, recipients=list)
    return sending.publish(event, services.repository, services.store, services.publisher)
