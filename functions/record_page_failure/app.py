"""RecordPageFailure: a page that failed for good gets a `failed` row per device."""

from __future__ import annotations

from typing import Any

from pushflow.domain import sending
from pushflow.event_shapes import require, require_page
from pushflow.handler import task
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "RecordPageFailure", notification_id=str)
    require_page(event, "RecordPageFailure")
    return sending.record_page_failure(event, services.repository)
