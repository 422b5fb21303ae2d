"""Finalize: count the outcomes, set the final status, publish metrics."""

from __future__ import annotations

from typing import Any

from pushflow.domain import sending
from pushflow.event_shapes import require
from pushflow.handler import task
from pushflow.observability import MetricUnit, metrics
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "Finalize", notification_id=(str, type(None)))
    notification = sending.finalize(event, services.repository)
    if notification is None:
        return {"notification_id": None}
    for outcome, count in notification.counts.items():
        metrics.add_metric(name=f"Deliveries_{outcome}", unit=MetricUnit.Count, value=count)
    metrics.add_metric(name=f"Sends_{notification.status.value}", unit=MetricUnit.Count, value=1)
    return notification.to_dict()
