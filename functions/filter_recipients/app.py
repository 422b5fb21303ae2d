"""FilterRecipients: keep the recipients a push may reach now (rules in Redis)."""

from __future__ import annotations

from typing import Any

from pushflow.domain import sending
from pushflow.event_shapes import require, require_page
from pushflow.handler import task
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "FilterRecipients", notification_id=str, recipients=list)
    require_page(event, "FilterRecipients")
    return sending.filter_recipients(
        event, services.repository, services.recipient_filter, services.clock.now()
    )
