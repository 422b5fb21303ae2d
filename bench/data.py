"""The benchmark's audience, seeded with COPY, and the sends and pages over it.

Devices get made-up SNS endpoint ARNs: no stage asks SNS (moto) about them,
publishing goes to the benchmark's own SNS stand-in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time as clock_time
from typing import Any

from bench.harness import Bench
from pushflow.domain.content import placeholders
from pushflow.domain.models import Notification, NotificationStatus, Outcome, PageRef
from pushflow.domain.paging import page_size_for
from pushflow_local.demo import DEMO_REQUEST

LOCALES = ("en", "en-GB", "de", "de-AT", "fr", "es", "pt-BR", "ja")
TIME_ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney")
DEVICES_PER_USER = 2
COPY_CHUNK_ROWS = 20_000
ACCOUNT_ARN = "arn:aws:sns:us-east-1:123456789012"

# The demo's send: a placeholder, so pages carry an attribute and are sized for it.
REQUEST: dict[str, Any] = DEMO_REQUEST


@dataclass(frozen=True)
class Audience:
    devices: int
    first_device_id: int
    first_user_id: int
    seed_seconds: float

    def user_of(self, device_id: int) -> int:
        return self.first_user_id + (device_id - self.first_device_id) // DEVICES_PER_USER


def chunks(lines: Iterator[str]) -> Iterator[str]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= COPY_CHUNK_ROWS:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


def _user_lines(users: int) -> Iterator[str]:
    for i in range(users):
        attributes = json.dumps({"first_name": f"User{i}", "plan": "pro" if i % 4 else "free"})
        yield f"bench-{i:07d}\t{LOCALES[i % 8]}\t{TIME_ZONES[i % 5]}\t{attributes}\n"


def _device_lines(devices: int, first_user_id: int) -> Iterator[str]:
    for i in range(devices):
        user_id = first_user_id + i // DEVICES_PER_USER
        if i % DEVICES_PER_USER:
            platform, application = "android", "GCM/pushflow-android"
        else:
            platform, application = "ios", "APNS/pushflow-ios"
        arn = f"{ACCOUNT_ARN}:endpoint/{application}/{i:08x}-0000-4000-8000-{i:012x}"
        yield f"{user_id}\t{platform}\ttoken-{i:010d}\t{arn}\tf\n"


def _preference_lines(users: int, first_user_id: int) -> Iterator[str]:
    """One user in ten has preferences: an opt-out, quiet hours or a lower cap."""
    for i in range(0, users, 10):
        user_id = first_user_id + i
        kind = (i // 10) % 3
        if kind == 0:
            yield f"{user_id}\t{{news}}\t\\N\t\\N\t{{}}\n"
        elif kind == 1:
            yield f"{user_id}\t{{}}\t{clock_time(22)}\t{clock_time(7)}\t{{}}\n"
        else:
            yield f'{user_id}\t{{}}\t\\N\t\\N\t{{"news": 1}}\n'


def seed(bench: Bench, devices: int) -> Audience:
    """An empty database and Redis, then `devices` devices of devices/2 users, with COPY."""
    started = time.perf_counter()
    repository = bench.services.repository
    repository.run(
        "TRUNCATE schedule_runs, schedules, deliveries, notifications, topic_subscriptions,"
        " preferences, devices, users RESTART IDENTITY"
    )
    bench.services.store.client.flushdb()
    users = (devices + DEVICES_PER_USER - 1) // DEVICES_PER_USER
    with repository.transaction() as conn:
        conn.run(
            "COPY users (external_id, locale, time_zone, attributes) FROM STDIN",
            stream=chunks(_user_lines(users)),
        )
        first_user_id = int(conn.run("SELECT min(id) FROM users")[0][0])
        conn.run(
            "COPY devices (user_id, platform, token, endpoint_arn, sandbox) FROM STDIN",
            stream=chunks(_device_lines(devices, first_user_id)),
        )
        conn.run(
            "COPY preferences (user_id, opted_out_categories, quiet_hours_start,"
            " quiet_hours_end, cap_overrides) FROM STDIN",
            stream=chunks(_preference_lines(users, first_user_id)),
        )
        first_device_id = int(conn.run("SELECT min(id) FROM devices")[0][0])
    # Steady state, as a table that has been read before: hint bits set,
    # visibility map and statistics current (no first-scan writes in the timings).
    for table in ("users", "devices", "preferences"):
        repository.run(f"VACUUM (ANALYZE) {table}")
    return Audience(devices, first_device_id, first_user_id, time.perf_counter() - started)


def new_send(bench: Bench, request: dict[str, Any] | None = None) -> Notification:
    """A running notification (as Prepare leaves it), for the stages to work on."""
    request = request or REQUEST
    notification, _ = bench.services.repository.create_notification(
        request, request["category"], NotificationStatus.RUNNING
    )
    return notification


def page_size(bench: Bench, notification: Notification) -> int:
    """The page size Prepare picks for this send (bounded by its heaviest recipient)."""
    keys = sorted(placeholders(notification.content))
    stats = bench.services.repository.attribute_stats(notification.audience, keys)
    return page_size_for(bench.services.settings.page_size, stats.max_bytes, len(keys))


def plan(bench: Bench, notification: Notification) -> list[tuple[PageRef, int]]:
    return bench.services.repository.plan_pages(
        notification.audience, page_size(bench, notification)
    )


def resolve_event(notification_id: str, page: PageRef) -> dict[str, Any]:
    """What the FanOut map hands ResolveRecipients: the page's key in the page plan."""
    return {"notification_id": notification_id, "page_key": f"plans/bench/{page.key()}"}


def with_send(event_json: str, notification_id: str) -> dict[str, Any]:
    """A page's event (kept as the JSON Lambda receives) for another send of the same audience."""
    event: dict[str, Any] = json.loads(event_json)
    event["notification_id"] = notification_id
    return event


def delivery_results(audience: Audience, page: PageRef) -> list[dict[str, Any]]:
    """A page's results as PublishBatch returns them: mostly sent, some of every other outcome."""
    results: list[dict[str, Any]] = []
    for device_id in range(page.first_device_id, page.last_device_id + 1):
        user_id = audience.user_of(device_id)
        bucket = device_id % 200
        if bucket == 0:
            results.append(
                {
                    "device_id": device_id,
                    "user_id": user_id,
                    "outcome": Outcome.ENDPOINT_DISABLED.value,
                    "error": "EndpointDisabled",
                }
            )
        elif bucket < 20:
            outcome = (Outcome.OPTED_OUT, Outcome.CAPPED, Outcome.QUIET_HOURS)[bucket % 3]
            results.append({"device_id": device_id, "user_id": user_id, "outcome": outcome.value})
        else:
            results.append(
                {
                    "device_id": device_id,
                    "user_id": user_id,
                    "outcome": Outcome.SENT.value,
                    "sns_message_id": f"{device_id:08x}-5b1e-5a4c-9d0e-{device_id:012x}",
                }
            )
    return results
