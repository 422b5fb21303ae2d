"""Seeding an audience for the demo and the tests: users, devices, SNS endpoints.

Rows go in with COPY (one round trip for thousands); each device gets a real
platform endpoint in (moto's) SNS, as registration would create it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moto.sns.models import sns_backends

from pushflow_local.runtime import ACCOUNT, REGION, LocalRuntime
from pushflow_local.sns_endpoint_index import create_endpoints

LOCALES = ["en", "en-GB", "de", "de-AT", "fr", "es", "pt-BR", "ja"]
TIME_ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/Vienna",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Sao_Paulo",
]


@dataclass(frozen=True)
class SeedUser:
    external_id: str
    locale: str = "en"
    time_zone: str = "UTC"
    attributes: dict[str, Any] = field(default_factory=dict)
    # One entry per device: (platform, sandbox)
    devices: Sequence[tuple[str, bool]] = (("ios", False), ("android", False))


@dataclass(frozen=True)
class SeededDevice:
    device_id: int
    user_external_id: str
    platform: str
    sandbox: bool
    endpoint_arn: str


def varied_users(count: int, seed: int = 7, prefix: str = "user") -> list[SeedUser]:
    rng = random.Random(seed)
    users = []
    for i in range(count):
        devices: list[tuple[str, bool]] = [("ios", i % 10 == 0), ("android", False)]
        if i % 3 == 0:
            devices = devices[:1]
        elif i % 3 == 1:
            devices = devices[1:]
        users.append(
            SeedUser(
                external_id=f"{prefix}-{i:06d}",
                locale=rng.choice(LOCALES),
                time_zone=rng.choice(TIME_ZONES),
                attributes={"first_name": f"User{i}", "plan": rng.choice(["free", "pro"])},
                devices=devices,
            )
        )
    return users


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _lines(values: Iterable[str]) -> str:
    """Values as one text parameter, split in SQL: pg8000 escapes an array parameter
    element by element (~1.5 s for the 100,000 ids of the large demo)."""
    listed = list(values)
    if any("\n" in value for value in listed):
        raise ValueError("an external id with a line break cannot be seeded")
    return "\n".join(listed)


def seed_users(
    runtime: LocalRuntime,
    users: Sequence[SeedUser],
    progress: Callable[[int, int], None] | None = None,
) -> list[SeededDevice]:
    """Insert users and their devices; every device gets its own SNS endpoint."""
    repository = runtime.services.repository
    apps = runtime.platform_applications

    body = "".join(
        f"{_copy_text(u.external_id)}\t{u.locale}\t{u.time_zone}\t"
        f"{_copy_text(json.dumps(u.attributes))}\n"
        for u in users
    )
    with repository.transaction() as conn:
        conn.run(
            "COPY users (external_id, locale, time_zone, attributes) FROM STDIN", stream=[body]
        )
    ids = dict(
        repository.run(
            "SELECT external_id, id FROM users"
            " WHERE external_id = ANY(string_to_array(:ids, E'\\n'))",
            ids=_lines(u.external_id for u in users),
        )
    )

    wanted = [
        (user, platform, sandbox, f"{platform}-{user.external_id}-{n}")
        for user in users
        for n, (platform, sandbox) in enumerate(user.devices)
    ]
    # In moto's backend directly, as its CreatePlatformEndpoint handler does: the same
    # endpoints, without a boto3 request each (pushflow_local/sns_endpoint_index.py).
    backend = sns_backends[ACCOUNT][REGION]
    arns: list[str] = []
    batch = 5_000
    for start in range(0, len(wanted), batch):
        arns += create_endpoints(
            backend,
            (
                (
                    apps["GCM" if platform == "android" else "APNS_SANDBOX" if sandbox else "APNS"],
                    token,
                )
                for _user, platform, sandbox, token in wanted[start : start + batch]
            ),
        )
        if progress:
            progress(len(arns), len(wanted))
    if progress and not wanted:
        progress(0, 0)

    rows = "".join(
        f"{ids[user.external_id]}\t{platform}\t{_copy_text(token)}\t{arn}\t"
        f"{'t' if sandbox else 'f'}\n"
        for (user, platform, sandbox, token), arn in zip(wanted, arns, strict=True)
    )
    with repository.transaction() as conn:
        conn.run(
            "COPY devices (user_id, platform, token, endpoint_arn, sandbox) FROM STDIN",
            stream=[rows],
        )
    devices = repository.run(
        "SELECT d.id, u.external_id, d.platform, d.sandbox, d.endpoint_arn FROM devices d"
        " JOIN users u ON u.id = d.user_id"
        " WHERE u.external_id = ANY(string_to_array(:ids, E'\\n'))"
        " ORDER BY d.id",
        ids=_lines(u.external_id for u in users),
    )
    return [SeededDevice(*row) for row in devices]


def disable_endpoints(runtime: LocalRuntime, endpoint_arns: Sequence[str]) -> None:
    """As SNS does when APNs/FCM reject a token: the endpoint answers EndpointDisabled."""
    sns = runtime.client("sns")
    for arn in endpoint_arns:
        sns.set_endpoint_attributes(EndpointArn=arn, Attributes={"Enabled": "false"})


def reset_data(runtime: LocalRuntime) -> None:
    runtime.services.repository.run(
        "TRUNCATE schedule_runs, schedules, deliveries, notifications, topic_subscriptions,"
        " removed_devices, publish_claims,"
        " preferences, devices, users RESTART IDENTITY"
    )
    runtime.services.store.client.flushdb()
