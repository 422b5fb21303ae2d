"""Caps hold when Redis loses its data (issue 15): counters rebuilt from PostgreSQL.

Through the real ASL and the local runtime: sends of a capped category, Redis
flushed between them (a failover to an empty replica, an eviction); what each
device got is read from what SNS received.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from pushflow.domain.categories import CATEGORIES
from pushflow_local.runtime import LocalRuntime
from pushflow_local.seed import SeedUser, seed_users
from tests.e2e.test_delivery_rules import message_counts, outcomes, request, send
from tests.e2e.test_send import unique_prefix

pytestmark = pytest.mark.e2e

NEWS_CAP = CATEGORIES["news"].daily_cap
assert NEWS_CAP is not None


def flush_redis(runtime: LocalRuntime) -> None:
    runtime.services.store.client.flushall()


def test_a_cap_holds_when_redis_lost_its_counters_between_sends(
    clean_runtime: LocalRuntime,
) -> None:
    # GIVEN the runtime's clock (the one caps count by) days ahead of the database's
    clean_runtime.clock.advance(timedelta(days=3))
    # ... and 12 users on two devices each who got today's `news` cap of pushes
    prefix = unique_prefix()
    users = [
        SeedUser(f"{prefix}-{i}", devices=[("ios", False), ("android", False)]) for i in range(12)
    ]
    devices = seed_users(clean_runtime, users)
    audience = {"type": "users", "external_ids": [u.external_id for u in users]}
    for _ in range(NEWS_CAP):
        sent, _ = send(clean_runtime, request(audience))
        assert sent.counts == {"sent": len(devices)}
    # ... and Redis losing everything it held
    flush_redis(clean_runtime)

    # WHEN one more `news` send goes to them
    capped, run = send(clean_runtime, request(audience))

    # THEN nobody got a push past the cap: every device is `capped`
    assert run["status"] == "SUCCEEDED"
    assert set(outcomes(clean_runtime, capped.id).values()) == {"capped"}
    assert message_counts(devices) == {d.device_id: NEWS_CAP for d in devices}
