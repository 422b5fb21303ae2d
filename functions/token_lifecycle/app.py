"""TokenLifecycleFunction: SNS endpoint events -> devices disabled or removed.

Subscribed to the platform applications' event topic (EventEndpointUpdated,
EventEndpointDeleted, EventDeliveryFailure). A database error raises, so Lambda
retries the event and, after its retries, parks it in the dead-letter queue.
"""

from __future__ import annotations

from typing import Any

from pushflow.adapters.device_lifecycle import DeviceLifecycleStore
from pushflow.domain import token_lifecycle
from pushflow.event_shapes import require
from pushflow.handler import task
from pushflow.observability import MetricUnit, logger, metrics
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, int]:
    require(event, "TokenLifecycle", Records=list)
    events, unreadable = token_lifecycle.parse_sns_event(event)
    for problem in unreadable:
        logger.warning("unreadable endpoint event", extra={"problem": problem})
    summary = token_lifecycle.apply_events(events, DeviceLifecycleStore(services.repository))
    summary.unreadable = len(unreadable)
    metrics.add_metric(name="Devices_disabled", unit=MetricUnit.Count, value=summary.disabled)
    metrics.add_metric(name="Devices_removed", unit=MetricUnit.Count, value=summary.removed)
    return summary.to_dict()
