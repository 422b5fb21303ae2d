"""RecordResults: write one page's delivery rows in bulk."""

from __future__ import annotations

from typing import Any

from pushflow.domain import sending
from pushflow.event_shapes import require, require_page
from pushflow.handler import task
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "RecordResults", notification_id=str)
    require_page(event, "RecordResults")
    if event.get("recorded") is not True:  # PublishBatch wrote them otherwise
        require(event, "RecordResults", results=list)
    return sending.record(event, services.repository)
