"""ReconcileSendsFunction: every few minutes, finalize the sends whose execution
ended without finalizing them (failed, timed out, aborted, never started)."""

from __future__ import annotations

import os
from typing import Any

from pushflow.domain import send_ends
from pushflow.handler import task
from pushflow.observability import MetricUnit, logger, metrics
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    summary = send_ends.reconcile(
        services.repository,
        services.executions,
        now=services.clock.now(),
        policy=send_ends.ReconcilePolicy.from_env(os.environ),
    )
    if summary.finalized:
        logger.warning("sends finalized by the reconciler", extra={"sends": summary.finalized})
    metrics.add_metric(name="Sends_reconciled", unit=MetricUnit.Count, value=len(summary.finalized))
    return summary.to_dict()
