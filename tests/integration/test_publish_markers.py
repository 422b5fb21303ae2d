"""The publish markers in real Redis: a page's first claim, its retries, settling, releasing."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from pushflow.adapters.redis_client import cluster_enabled
from pushflow.adapters.redis_store import DEDUPE_TTL_SECONDS, PENDING, page_key
from pushflow_local.servers import redis_mode

pytestmark = pytest.mark.integration

MESSAGE_ID = "00000000-0000-4000-8000-000000000001"


def test_a_pages_first_claim_takes_every_device_and_leaves_them_pending(runtime: Any) -> None:
    store, notification = runtime.services.store, str(uuid.uuid4())
    devices = list(range(10, 1510))  # more than one HSET slice of the script

    claims = store.claim(notification, "p0", devices)

    assert claims == dict.fromkeys(devices)
    assert store.markers(notification, "p0") == dict.fromkeys(devices, PENDING)
    ttl = store.client.ttl(page_key(notification, "p0"))
    assert DEDUPE_TTL_SECONDS - 60 < ttl <= DEDUPE_TTL_SECONDS


def test_a_retry_finds_what_the_first_attempt_left_and_claims_only_the_rest(
    runtime: Any,
) -> None:
    store, notification = runtime.services.store, str(uuid.uuid4())
    store.claim(notification, "p0", [1, 2, 3, 4])
    store.settle(notification, "p0", {1: MESSAGE_ID, 2: "failed:InvalidParameter"}, released=[3])

    # 3 was released, 4 stayed pending (the attempt stopped), 5 is new to this page
    claims = store.claim(notification, "p0", [1, 2, 3, 4, 5])

    assert claims == {1: MESSAGE_ID, 2: "failed:InvalidParameter", 3: None, 4: PENDING, 5: None}
    again = store.claim(notification, "p0", [3, 5])
    assert again == {3: PENDING, 5: PENDING}


def test_pages_and_sends_do_not_share_markers(runtime: Any) -> None:
    store, notification = runtime.services.store, str(uuid.uuid4())
    store.claim(notification, "p0", [1])

    assert store.claim(notification, "p1", [1]) == {1: None}
    assert store.claim(str(uuid.uuid4()), "p0", [1]) == {1: None}


def test_a_claim_naming_a_device_twice_is_refused_before_redis(runtime: Any) -> None:
    store, notification = runtime.services.store, str(uuid.uuid4())

    with pytest.raises(ValueError, match="more than once"):
        store.claim(notification, "p0", [7, 8, 7])
    assert store.markers(notification, "p0") == {}


def test_the_runtime_runs_on_the_redis_mode_asked_for(runtime: Any) -> None:
    """Cluster mode unless PUSHFLOW_REDIS_MODE=standalone (`make test` runs this file in both)."""
    if os.environ.get("REDIS_URL"):
        with redis.Redis.from_url(os.environ["REDIS_URL"]) as named:
            expected_cluster = cluster_enabled(named)
    else:
        expected_cluster = redis_mode() == "cluster"
    assert isinstance(runtime.services.store.client, RedisCluster) is expected_cluster
