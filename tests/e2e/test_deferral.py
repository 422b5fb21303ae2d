"""Sends that defer recipients in quiet hours to the end of their quiet hours.

The deferred passes wait in the state machine (WaitForQuietHoursEnd) until
quiet hours are over; under `runtime.virtual_time_enabled()` that Wait moves
the runtime's clock instead of sleeping, so hours pass in a moment. The clock
only moves forward: these tests compute every window from `runtime.clock.now()`,
and leave the clock ahead for the tests after them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeedUser, seed_users
from tests.e2e.test_delivery_rules import message_counts, send, set_preferences, wall_clock
from tests.e2e.test_send import deliveries, unique_prefix

pytestmark = pytest.mark.e2e


def defer_request(external_ids: Iterable[str]) -> dict[str, Any]:
    return {
        "category": "news",
        "audience": {"type": "users", "external_ids": list(external_ids)},
        "content": {"title": "Your weekly digest", "body": "Five stories picked for you."},
        "quiet_hours": "defer",
    }


def to_the_minute(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(second=0, microsecond=0)


def send_deferring(
    runtime: LocalRuntime, external_ids: Iterable[str]
) -> tuple[str, dict[str, Any]]:
    """Send with Wait states on the movable clock; wait for the execution to end."""
    with runtime.virtual_time_enabled():
        notification, execution = send(runtime, defer_request(external_ids))
    return notification.id, execution


def waits(runtime: LocalRuntime, execution_arn: str) -> list[str]:
    """The instants the execution's WaitForQuietHoursEnd states waited for, in order."""
    return [
        json.loads(event["stateEnteredEventDetails"]["input"])["wait_until"]
        for event in runtime.history(execution_arn)
        if event.get("stateEnteredEventDetails", {}).get("name") == "WaitForQuietHoursEnd"
    ]


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# moto's Wait counts whole seconds, rounding down: the clock may stop short of the
# instant waited for by less than a second (FilterRecipients sends from the instant).
WAIT_ROUNDING = timedelta(seconds=1)


def test_deferred_recipients_in_three_zones_each_get_the_push_once_when_their_quiet_hours_end(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN users in three zones whose quiet hours end in one, two and three hours,
    # and one user without quiet hours
    prefix = unique_prefix()
    now = clean_runtime.clock.now()
    ends = {
        "Europe/Berlin": to_the_minute(now + timedelta(hours=1)),
        "America/New_York": to_the_minute(now + timedelta(hours=2)),
        "Asia/Tokyo": to_the_minute(now + timedelta(hours=3)),
    }
    sleepers = [SeedUser(f"{prefix}-{zone}", "en", zone) for zone in ends]
    awake = SeedUser(f"{prefix}-awake", "en", "Australia/Sydney", devices=[("android", False)])
    devices = seed_users(clean_runtime, [*sleepers, awake])
    for user in sleepers:
        window = (
            wall_clock(now - timedelta(hours=1), user.time_zone),
            wall_clock(ends[user.time_zone], user.time_zone),
        )
        set_preferences(clean_runtime, user.external_id, quiet_hours=window)

    # WHEN a news send that defers quiet hours goes to all of them
    notification_id, execution = send_deferring(
        clean_runtime, [u.external_id for u in [*sleepers, awake]]
    )

    # THEN the execution waited three times, each until one zone's quiet hours ended
    assert execution["status"] == "SUCCEEDED"
    deferred_pass = ["WaitForQuietHoursEnd", "FanOut", "PlanDeferred", "HasDeferred"]
    assert clean_runtime.state_path(execution["executionArn"]) == [
        *["Prepare", "ShouldSend", "HasRecipients", "FanOut", "PlanDeferred", "HasDeferred"],
        *deferred_pass * 3,
        "Finalize",
    ]
    assert waits(clean_runtime, execution["executionArn"]) == [iso(e) for e in ends.values()]
    assert clean_runtime.clock.now() + WAIT_ROUNDING >= max(ends.values())

    # AND every device was sent exactly once: one `sent` row, one message in SNS
    notification = clean_runtime.services.repository.get_notification(notification_id)
    assert notification.status.value == "completed"
    assert notification.counts == {"sent": len(devices)}
    rows = deliveries(clean_runtime, notification_id)
    assert {device: row[1] for device, row in rows.items()} == {
        d.device_id: "sent" for d in devices
    }
    assert message_counts(devices) == {d.device_id: 1 for d in devices}


def next_transition(zone: str, after: datetime) -> datetime:
    """The next instant (UTC, to the second) at which `zone`'s offset from UTC changes."""
    tz = ZoneInfo(zone)
    low = int(after.timestamp())
    offset = datetime.fromtimestamp(low, tz).utcoffset()
    high = low
    while datetime.fromtimestamp(high, tz).utcoffset() == offset:
        low, high = high, high + 6 * 3600
        assert high - int(after.timestamp()) < 400 * 86400, f"{zone} has no DST change"
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


# In the order of their next change from late in the year: spring forward in New York
# and Berlin, fall back in Sydney.
@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin", "Australia/Sydney"])
def test_on_the_night_clocks_change_the_push_goes_when_the_local_clock_reads_the_end(
    clean_runtime: LocalRuntime, zone: str
) -> None:
    # GIVEN the night of the zone's next DST change, half an hour before the change,
    # and a user whose quiet hours run from 90 minutes before it to 90 minutes after
    # (read on the wall: 3 hours across a spring-forward, 1 across a fall-back)
    change = next_transition(zone, clean_runtime.clock.now() + timedelta(hours=3))
    clean_runtime.clock.advance_to(change - timedelta(minutes=30))
    end = change + timedelta(minutes=90)
    start_wall, end_wall = wall_clock(change - timedelta(minutes=90), zone), wall_clock(end, zone)
    offsets = {
        (change + timedelta(minutes=m)).astimezone(ZoneInfo(zone)).utcoffset() for m in (-90, 90)
    }
    assert len(offsets) == 2
    prefix = unique_prefix()
    user = SeedUser(f"{prefix}-dst", "en", zone, devices=[("ios", False)])
    devices = seed_users(clean_runtime, [user])
    set_preferences(clean_runtime, user.external_id, quiet_hours=(start_wall, end_wall))

    try:
        # WHEN a send that defers quiet hours goes to the user
        notification_id, execution = send_deferring(clean_runtime, [user.external_id])

        # THEN it waited exactly until the local clock read the end: two elapsed hours
        # after the send started, whatever the wall clock did in between
        assert execution["status"] == "SUCCEEDED"
        assert waits(clean_runtime, execution["executionArn"]) == [iso(end)]
        assert clean_runtime.clock.now() + WAIT_ROUNDING >= end
        # AND the user got the push once
        rows = deliveries(clean_runtime, notification_id)
        assert [row[1] for row in rows.values()] == ["sent"]
        assert message_counts(devices) == {d.device_id: 1 for d in devices}
    finally:
        # Leave the night of the change behind for the tests after this one.
        clean_runtime.clock.advance(timedelta(days=1))
