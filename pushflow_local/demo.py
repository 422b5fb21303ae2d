"""The demo's audience and request, and the data the sample events refer to."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime
from pushflow_local.seed import SeedUser, seed_users, varied_users

DEMO_REQUEST: dict[str, Any] = {
    "category": "news",
    "audience": {"type": "all"},
    "content": {
        "title": "Hi {first_name}, your digest is ready",
        "body": "Five stories picked for you this week.",
        "localizations": {
            "de": {
                "title": "Hallo {first_name}, deine Übersicht ist da",
                "body": "Fünf Geschichten, für dich ausgewählt.",
            },
            "de-AT": {"title": "Servus {first_name}, deine Übersicht ist da"},
            "fr": {
                "title": "Bonjour {first_name}, votre sélection est prête",
                "body": "Cinq articles choisis pour vous cette semaine.",
            },
        },
        "data": {"deep_link": "app://digest"},
        "badge": 1,
        "sound": "default",
        "thread_id": "digest",
    },
}


def users_for(recipients: int) -> list[SeedUser]:
    """Enough varied users for `recipients` devices (a third of them have two)."""
    users: list[SeedUser] = []
    devices = 0
    batch = varied_users(recipients, prefix="demo")
    for user in batch:
        if devices >= recipients:
            break
        take = user.devices[: recipients - devices]
        users.append(SeedUser(user.external_id, user.locale, user.time_zone, user.attributes, take))
        devices += len(take)
    return users


def seed_demo(
    runtime: LocalRuntime, recipients: int, progress: Callable[[int, int], None] | None = None
) -> None:
    seed_users(runtime, users_for(recipients), progress)


SAMPLE_NOTIFICATION_ID = "7b1f6f0e-3c1d-4d3e-9a55-2f1c0c7e8a10"


def seed_sample_data(runtime: LocalRuntime) -> None:
    """Create what `events/*.json` refer to: two users, three devices, one notification.

    The sample events carry fixed endpoint ARNs; moto's endpoints get random
    ones, so the created endpoints are re-filed under the sample ARNs.
    """
    from moto.sns.models import sns_backends

    devices = seed_users(
        runtime,
        [
            SeedUser(
                "sample-anna",
                "de-AT",
                "Europe/Vienna",
                {"first_name": "Anna"},
                [("ios", False), ("android", False)],
            ),
            SeedUser(
                "sample-ben", "en", "America/New_York", {"first_name": "Ben"}, [("android", False)]
            ),
        ],
    )
    sample_arns = {
        1: f"arn:aws:sns:{REGION}:{ACCOUNT}:endpoint/APNS/pushflow-ios/"
        "5a3e8f8e-1c4b-3a7e-9d2f-0f6b2c1a9e11",
        3: f"arn:aws:sns:{REGION}:{ACCOUNT}:endpoint/GCM/pushflow-android/"
        "8c0d7b52-6f0e-3b6a-a1d4-3e2f1b0c9d22",
    }
    backend = sns_backends[ACCOUNT][REGION]
    for device in devices:
        if device.device_id in sample_arns:
            endpoint = backend.platform_endpoints.pop(device.endpoint_arn)
            endpoint.arn = sample_arns[device.device_id]
            backend.platform_endpoints[endpoint.arn] = endpoint
            runtime.services.repository.run(
                "UPDATE devices SET endpoint_arn = :arn WHERE id = :id",
                arn=endpoint.arn,
                id=device.device_id,
            )
    runtime.services.repository.run(
        "INSERT INTO notifications (id, request_hash, request, category, status)"
        " VALUES (CAST(:id AS uuid), 'sample', CAST(:request AS jsonb), :category, 'accepted')",
        id=SAMPLE_NOTIFICATION_ID,
        request=json.dumps(DEMO_REQUEST),
        category="news",
    )
