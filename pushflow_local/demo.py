"""The demo's audience and request, and the data the sample events refer to."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime
from pushflow_local.seed import SeedUser, disable_endpoints, seed_users, varied_users

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


def demo_users(count: int) -> list[SeedUser]:
    """`count` users with one device each: both platforms, varied locales and zones."""
    return [
        SeedUser(
            u.external_id,
            u.locale,
            u.time_zone,
            u.attributes,
            [("ios", i % 20 == 0) if i % 2 == 0 else ("android", False)],
        )
        for i, u in enumerate(varied_users(count, prefix="demo"))
    ]


# Every 100 users (by seeding order): who has which reason not to get the push.
OPTED_OUT = range(0, 5)  # opted out of the category
IN_QUIET_HOURS = range(5, 8)  # quiet hours right now, in their own zone
CAP_REACHED = range(8, 12)  # already had today's three news pushes
DISABLED_ENDPOINT_EVERY = 200  # one in 200: APNs/FCM rejected the token


def seed_demo(
    runtime: LocalRuntime, recipients: int, progress: Callable[[int, int], None] | None = None
) -> dict[str, int]:
    """Seed the demo's audience; returns the outcome counts the send must reach."""
    from pushflow.adapters.recipient_filter import cap_key

    users = demo_users(recipients)
    devices = seed_users(runtime, users, progress)
    repository = runtime.services.repository
    ids = dict(repository.run("SELECT external_id, id FROM users"))
    now = runtime.clock.now()
    expected = {"sent": 0, "opted_out": 0, "quiet_hours": 0, "capped": 0, "endpoint_disabled": 0}
    disabled: list[str] = []
    opted_out: list[int] = []
    quiet: list[tuple[int, str, str]] = []
    redis = runtime.services.store.client
    pipe = redis.pipeline(transaction=False)
    for i, (user, device) in enumerate(zip(users, devices, strict=True)):
        user_id = ids[user.external_id]
        if i % 100 in OPTED_OUT:
            opted_out.append(user_id)
            expected["opted_out"] += 1
        elif i % 100 in IN_QUIET_HOURS:
            local = now.astimezone(ZoneInfo(user.time_zone))
            quiet.append(
                (user_id, f"{(local.hour - 1) % 24:02d}:00", f"{(local.hour + 2) % 24:02d}:00")
            )
            expected["quiet_hours"] += 1
        elif i % 100 in CAP_REACHED:
            for n in range(3):
                earlier = int((now.timestamp() - 3600 * (n + 1)) * 1000)
                pipe.zadd(cap_key(user_id, "news"), {f"earlier-news-{n}": earlier})
            expected["capped"] += 1
        elif i % DISABLED_ENDPOINT_EVERY == 13:
            disabled.append(device.endpoint_arn)
            expected["endpoint_disabled"] += 1
        else:
            expected["sent"] += 1
    pipe.execute()
    repository.run(
        "INSERT INTO preferences (user_id, opted_out_categories)"
        " SELECT id, ARRAY['news', 'marketing'] FROM users WHERE id = ANY(CAST(:ids AS bigint[]))",
        ids=opted_out,
    )
    # One statement for all of them (one each took ~7 ms: 21 s at 100,000 devices).
    repository.run(
        "INSERT INTO preferences (user_id, quiet_hours_start, quiet_hours_end)"
        " SELECT id, CAST(q_start AS time), CAST(q_end AS time)"
        " FROM unnest(CAST(:ids AS bigint[]), CAST(:starts AS text[]), CAST(:ends AS text[]))"
        " AS q(id, q_start, q_end)",
        ids=[user_id for user_id, _, _ in quiet],
        starts=[start for _, start, _ in quiet],
        ends=[end for _, _, end in quiet],
    )
    disable_endpoints(runtime, disabled)
    return {outcome: count for outcome, count in expected.items() if count}


SAMPLE_NOTIFICATION_ID = "7b1f6f0e-3c1d-4d3e-9a55-2f1c0c7e8a10"
SAMPLE_DEVICES_LAST_SEEN = "2025-06-01T00:00:00Z"


# The secrets events/platform_application_*.json name (Secrets Manager finds a secret
# by its full ARN, whose last six characters are random, through its name).
SAMPLE_SECRETS = {
    "pushflow/dev/fcm-service-account": {
        "type": "service_account",
        "project_id": "pushflow-sample",
        "private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n",
        "client_email": "pushflow@pushflow-sample.iam.gserviceaccount.com",
    },
}


def seed_sample_secrets(runtime: LocalRuntime) -> dict[str, str]:
    """Create the sample secrets; their ARNs by name (the suffix is Secrets Manager's)."""
    secrets = runtime.client("secretsmanager")
    return {
        name: secrets.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]
        for name, value in SAMPLE_SECRETS.items()
    }


def with_sample_secret_arns(event: Any, arns: dict[str, str]) -> Any:
    """A custom-resource sample with its secret's ARN as created locally: the sample
    names the secret by a full ARN whose random suffix no other stack can have."""
    properties = event.get("ResourceProperties") if isinstance(event, dict) else None
    sample_arn = (properties or {}).get("CredentialsSecretArn", "")
    name = sample_arn.partition(":secret:")[2].rpartition("-")[0]
    if name not in arns:
        return event
    replaced = {**(properties or {}), "CredentialsSecretArn": arns[name]}
    return {**event, "ResourceProperties": replaced}


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
    # Registered before the token-lifecycle samples' events (June 2025): SNS events
    # older than a device's last registration are stale and left alone.
    runtime.services.repository.run(
        "UPDATE devices SET last_seen_at = CAST(:at AS timestamptz) WHERE id = ANY(:ids)",
        at=SAMPLE_DEVICES_LAST_SEEN,
        ids=[device.device_id for device in devices],
    )
    runtime.services.repository.run(
        "INSERT INTO notifications (id, request_hash, request, category, status)"
        " VALUES (CAST(:id AS uuid), 'sample', CAST(:request AS jsonb), :category, 'accepted')",
        id=SAMPLE_NOTIFICATION_ID,
        request=json.dumps(DEMO_REQUEST),
        category="news",
    )
