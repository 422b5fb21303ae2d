"""Prepare: find the send (a schedule's firing creates its run), mark it running,
and write its page plan (state `Prepare`)."""

from __future__ import annotations

from functools import partial
from typing import Any

from pushflow.domain import scheduling, sending
from pushflow.event_shapes import require
from pushflow.handler import task
from pushflow.services import Services


@task
def lambda_handler(event: dict[str, Any], services: Services) -> dict[str, Any]:
    require(event, "Prepare", firing=dict, execution_arn=str)
    return sending.prepare(
        event,
        services.repository,
        services.page_plans,
        configured_page_size=services.settings.page_size,
        max_concurrency=services.settings.map_concurrency,
        resolve_firing=partial(scheduling.resolve_firing, repository=services.repository),
    )
