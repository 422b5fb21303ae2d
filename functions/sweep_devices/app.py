"""DeviceSweepFunction: daily, remove devices disabled for longer than the retention.

Their SNS endpoints are deleted too. A run stops 30 seconds before its timeout
(the Lambda context's remaining time); the next run takes what is left.
"""

from __future__ import annotations

import os
from typing import Any

from pushflow.adapters.device_lifecycle import DeviceLifecycleStore
from pushflow.domain import token_lifecycle
from pushflow.handler import deadline, task
from pushflow.observability import MetricUnit, logger, metrics
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    policy = token_lifecycle.SweepPolicy.from_env(os.environ)
    summary = token_lifecycle.sweep(
        DeviceLifecycleStore(services.repository),
        services.endpoints,
        now=services.clock.now(),
        policy=policy,
        time_left=deadline().seconds_left,
    )
    if summary.endpoint_errors:
        logger.warning(
            "some endpoints could not be deleted",
            extra={"errors": summary.endpoint_errors[:20], "count": len(summary.endpoint_errors)},
        )
    metrics.add_metric(name="Devices_swept", unit=MetricUnit.Count, value=summary.removed)
    return summary.to_dict()
