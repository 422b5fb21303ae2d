"""FilterRecipients against real Redis and PostgreSQL: opt-outs, quiet hours, caps, dedupe."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from pushflow.adapters.recipient_filter import FilterDecision, RecipientFilter
from pushflow.adapters.redis_client import connect
from pushflow.domain.categories import CATEGORIES
from pushflow.domain.errors import TransientStoreError
from pushflow.domain.models import Outcome, PageRef, Recipient
from pushflow.domain.rules import Preferences
from pushflow_local.seed import SeedUser, seed_users

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 15, 4, 0, tzinfo=UTC)  # 06:00 Berlin, 00:00 New York, 13:00 Tokyo
MARKETING = CATEGORIES["marketing"]  # daily cap 2


def new_id() -> str:
    return str(uuid.uuid4())


def seed(runtime: Any, *users: SeedUser) -> dict[str, list[Recipient]]:
    """Users with their devices; each user's recipients as ResolveRecipients returns them."""
    seed_users(runtime, list(users))
    resolved = runtime.services.repository.resolve_page(
        {"type": "users", "external_ids": [u.external_id for u in users]},
        PageRef(0, 0, 2**62),
        [],
    )
    by_user: dict[str, list[Recipient]] = {u.external_id: [] for u in users}
    ids = user_ids(runtime, [u.external_id for u in users])
    external = {v: k for k, v in ids.items()}
    for recipient in map(Recipient.from_dict, resolved):
        by_user[external[recipient.user_id]].append(recipient)
    return by_user


def user_ids(runtime: Any, external_ids: Sequence[str]) -> dict[str, int]:
    return dict(
        runtime.services.repository.run(
            "SELECT external_id, id FROM users WHERE external_id = ANY(CAST(:ids AS text[]))",
            ids=list(external_ids),
        )
    )


def set_preferences(
    runtime: Any,
    user_id: int,
    opted_out: Sequence[str] = (),
    quiet: tuple[str, str] | None = None,
    caps: Mapping[str, int] | None = None,
) -> None:
    runtime.services.repository.run(
        "INSERT INTO preferences (user_id, opted_out_categories, quiet_hours_start,"
        " quiet_hours_end, cap_overrides) VALUES (:user, CAST(:opted_out AS text[]),"
        " CAST(:start AS time), CAST(:end AS time), CAST(:caps AS jsonb))"
        " ON CONFLICT (user_id) DO UPDATE SET"
        " opted_out_categories = excluded.opted_out_categories,"
        " quiet_hours_start = excluded.quiet_hours_start,"
        " quiet_hours_end = excluded.quiet_hours_end,"
        " cap_overrides = excluded.cap_overrides, updated_at = now()",
        user=user_id,
        opted_out=list(opted_out),
        start=quiet[0] if quiet else None,
        end=quiet[1] if quiet else None,
        caps=json.dumps(dict(caps or {})),
    )


def make_filter(runtime: Any, **options: Any) -> RecipientFilter:
    return RecipientFilter(
        runtime.services.store.client, runtime.services.repository.load_preferences, **options
    )


def outcomes(decision: FilterDecision) -> dict[int, str]:
    """Device id -> what happened to it: `eligible`, `deferred` or the filtered outcome."""
    result = {r.device_id: "eligible" for r in decision.eligible}
    result.update({r.device_id: "deferred" for r, _ in decision.deferred})
    result.update({r.device_id: r.outcome.value for r in decision.filtered})
    return result


def devices(*groups: Sequence[Recipient]) -> list[int]:
    return [r.device_id for group in groups for r in group]


# -- opt-outs and quiet hours ----------------------------------------------------------


def test_opted_out_users_are_filtered_except_from_categories_they_cannot_leave(
    clean_runtime: Any,
) -> None:
    by_user = seed(clean_runtime, SeedUser("ana"), SeedUser("ben"))
    ana = by_user["ana"][0].user_id
    set_preferences(clean_runtime, ana, opted_out=["marketing", "security"])
    everyone = by_user["ana"] + by_user["ben"]
    recipient_filter = make_filter(clean_runtime)

    marketing = recipient_filter.apply(new_id(), 0, MARKETING, "suppress", everyone, NOW)
    security = recipient_filter.apply(
        new_id(), 0, CATEGORIES["security"], "suppress", everyone, NOW
    )

    assert outcomes(marketing) == {
        **dict.fromkeys(devices(by_user["ana"]), Outcome.OPTED_OUT.value),
        **dict.fromkeys(devices(by_user["ben"]), "eligible"),
    }
    assert {r.user_id for r in marketing.filtered} == {ana}
    assert outcomes(security) == dict.fromkeys(devices(everyone), "eligible")
    assert [r.device_id for r in security.eligible] == devices(everyone)  # page order kept
    # Each eligible recipient's place in the page given, for the caller to pass it on.
    for decision in (marketing, security):
        assert [everyone[i] for i in decision.eligible_positions] == decision.eligible
    assert marketing.eligible_positions == list(range(len(by_user["ana"]), len(everyone)))


def test_quiet_hours_suppress_or_defer_in_each_recipients_zone(clean_runtime: Any) -> None:
    by_user = seed(
        clean_runtime,
        SeedUser("berlin", time_zone="Europe/Berlin"),
        SeedUser("new-york", time_zone="America/New_York"),
        SeedUser("tokyo", time_zone="Asia/Tokyo"),
    )
    for group in by_user.values():
        set_preferences(clean_runtime, group[0].user_id, quiet=("22:00", "07:00"))
    everyone = [r for group in by_user.values() for r in group]
    recipient_filter = make_filter(clean_runtime)

    suppressed = recipient_filter.apply(new_id(), 0, MARKETING, "suppress", everyone, NOW)
    deferred = recipient_filter.apply(new_id(), 0, MARKETING, "defer", everyone, NOW)
    receipts = recipient_filter.apply(
        new_id(), 0, CATEGORIES["transactional"], "suppress", everyone, NOW
    )

    asleep = devices(by_user["berlin"], by_user["new-york"])
    assert outcomes(suppressed) == {
        **dict.fromkeys(asleep, Outcome.QUIET_HOURS.value),
        **dict.fromkeys(devices(by_user["tokyo"]), "eligible"),
    }
    assert outcomes(deferred) == {
        **dict.fromkeys(asleep, "deferred"),
        **dict.fromkeys(devices(by_user["tokyo"]), "eligible"),
    }
    # 07:00 local: 05:00 UTC in Berlin (CEST), 11:00 UTC in New York (EDT).
    assert {r.device_id: until for r, until in deferred.deferred} == {
        **dict.fromkeys(devices(by_user["berlin"]), datetime(2026, 6, 15, 5, tzinfo=UTC)),
        **dict.fromkeys(devices(by_user["new-york"]), datetime(2026, 6, 15, 11, tzinfo=UTC)),
    }
    assert outcomes(receipts) == dict.fromkeys(devices(everyone), "eligible")


def test_deferred_and_quiet_recipients_do_not_count_against_the_cap(clean_runtime: Any) -> None:
    by_user = seed(clean_runtime, SeedUser("night-owl", time_zone="Europe/Berlin"))
    night_owl = by_user["night-owl"]
    set_preferences(clean_runtime, night_owl[0].user_id, quiet=("22:00", "07:00"))
    recipient_filter = make_filter(clean_runtime)

    for _ in range(3):
        recipient_filter.apply(new_id(), 0, MARKETING, "defer", night_owl, NOW)
    later = recipient_filter.apply(
        new_id(), 0, MARKETING, "suppress", night_owl, NOW.replace(hour=8)
    )

    assert outcomes(later) == dict.fromkeys(devices(night_owl), "eligible")


# -- caps ------------------------------------------------------------------------------


def test_the_daily_cap_is_exact_and_counts_users_not_devices(clean_runtime: Any) -> None:
    by_user = seed(clean_runtime, SeedUser("two-phones"), SeedUser("strict"), SeedUser("keen"))
    set_preferences(clean_runtime, by_user["strict"][0].user_id, caps={"marketing": 1})
    set_preferences(clean_runtime, by_user["keen"][0].user_id, caps={"marketing": 3})
    everyone = [r for group in by_user.values() for r in group]
    recipient_filter = make_filter(clean_runtime)

    sends = [
        outcomes(
            recipient_filter.apply(
                new_id(), 0, MARKETING, "suppress", everyone, NOW + timedelta(minutes=i)
            )
        )
        for i in range(3)
    ]

    def seen_by(name: str) -> list[set[str]]:
        return [{send[d] for d in devices(by_user[name])} for send in sends]

    # Cap 2 (the category default): both phones get the first two, neither the third.
    assert seen_by("two-phones") == [{"eligible"}, {"eligible"}, {Outcome.CAPPED.value}]
    assert seen_by("strict") == [{"eligible"}, {Outcome.CAPPED.value}, {Outcome.CAPPED.value}]
    assert seen_by("keen") == [{"eligible"}, {"eligible"}, {"eligible"}]


def test_the_cap_window_rolls_over_24_hours(clean_runtime: Any) -> None:
    phones = seed(clean_runtime, SeedUser("rolling"))["rolling"]
    recipient_filter = make_filter(clean_runtime)
    recipient_filter.apply(new_id(), 0, MARKETING, "suppress", phones, NOW)
    recipient_filter.apply(new_id(), 0, MARKETING, "suppress", phones, NOW + timedelta(hours=1))

    almost = recipient_filter.apply(
        new_id(), 0, MARKETING, "suppress", phones, NOW + timedelta(hours=23, minutes=59)
    )
    next_day = recipient_filter.apply(
        new_id(), 0, MARKETING, "suppress", phones, NOW + timedelta(hours=24, seconds=1)
    )

    assert set(outcomes(almost).values()) == {Outcome.CAPPED.value}
    assert set(outcomes(next_day).values()) == {"eligible"}


def test_a_retried_page_counts_once_and_is_no_duplicate(clean_runtime: Any) -> None:
    phones = seed(clean_runtime, SeedUser("retried"))["retried"]
    recipient_filter = make_filter(clean_runtime)
    first = new_id()

    attempts = [
        outcomes(recipient_filter.apply(first, 3, MARKETING, "suppress", phones, NOW))
        for _ in range(3)
    ]
    second = recipient_filter.apply(new_id(), 0, MARKETING, "suppress", phones, NOW)
    third = recipient_filter.apply(new_id(), 0, MARKETING, "suppress", phones, NOW)

    assert attempts == [dict.fromkeys(devices(phones), "eligible")] * 3
    assert set(outcomes(second).values()) == {"eligible"}  # the retries used one of 2
    assert set(outcomes(third).values()) == {Outcome.CAPPED.value}


def test_another_page_of_the_same_notification_is_a_duplicate(clean_runtime: Any) -> None:
    phones = seed(clean_runtime, SeedUser("twice"))["twice"]
    recipient_filter = make_filter(clean_runtime)
    notification_id = new_id()

    page_0 = recipient_filter.apply(notification_id, 0, MARKETING, "suppress", phones, NOW)
    page_1 = recipient_filter.apply(notification_id, 1, MARKETING, "suppress", phones, NOW)
    page_0_again = recipient_filter.apply(notification_id, 0, MARKETING, "suppress", phones, NOW)
    receipts = recipient_filter.apply(
        notification_id, 1, CATEGORIES["transactional"], "suppress", phones, NOW
    )

    assert set(outcomes(page_0).values()) == {"eligible"}
    assert outcomes(page_1) == dict.fromkeys(devices(phones), Outcome.DUPLICATE.value)
    assert set(outcomes(page_0_again).values()) == {"eligible"}
    assert set(outcomes(receipts).values()) == {Outcome.DUPLICATE.value}  # dedupe for all


def test_a_device_twice_in_one_page_goes_out_once(clean_runtime: Any) -> None:
    phone = seed(clean_runtime, SeedUser("echo", devices=(("ios", False),)))["echo"][0]

    decision = make_filter(clean_runtime).apply(
        new_id(), 0, MARKETING, "suppress", [phone, phone], NOW
    )

    assert decision.eligible == [phone]
    assert [r.outcome for r in decision.filtered] == [Outcome.DUPLICATE]


def test_concurrent_sends_never_let_two_through_a_cap_of_one(clean_runtime: Any) -> None:
    users = [SeedUser(f"contested-{i}") for i in range(20)]
    by_user = seed(clean_runtime, *users)
    for group in by_user.values():
        set_preferences(clean_runtime, group[0].user_id, caps={"news": 1})
    everyone = [r for group in by_user.values() for r in group]
    recipient_filter = make_filter(clean_runtime)

    for round_number in range(5):
        now = NOW + timedelta(days=2 * round_number)  # a fresh 24 h window each round
        start = threading.Barrier(2)
        decisions: dict[str, FilterDecision] = {}

        def send(
            notification_id: str,
            now: datetime,
            start: threading.Barrier,
            decisions: dict[str, FilterDecision],
        ) -> None:
            start.wait(timeout=10)
            decisions[notification_id] = recipient_filter.apply(
                notification_id, 0, CATEGORIES["news"], "suppress", everyone, now
            )

        threads = [
            threading.Thread(target=send, args=(new_id(), now, start, decisions)) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(decisions) == 2

        for group in by_user.values():
            reached = [
                {outcomes(decision)[d] for d in devices(group)} for decision in decisions.values()
            ]
            # Each user gets exactly one of the two, on all their devices.
            assert sorted(reached, key=sorted) == [{"capped"}, {"eligible"}]


# -- the preference cache -------------------------------------------------------------


class CountingLoader:
    def __init__(self, load: Callable[[Sequence[int]], Mapping[int, Preferences]]) -> None:
        self._load = load
        self.calls: list[list[int]] = []

    def __call__(self, user_ids: Sequence[int]) -> Mapping[int, Preferences]:
        self.calls.append(sorted(user_ids))
        return self._load(user_ids)


def test_preferences_are_read_through_the_cache_until_invalidated(clean_runtime: Any) -> None:
    by_user = seed(clean_runtime, SeedUser("cached"), SeedUser("no-row"))
    cached, no_row = by_user["cached"][0].user_id, by_user["no-row"][0].user_id
    set_preferences(clean_runtime, cached, opted_out=["news"])
    everyone = by_user["cached"] + by_user["no-row"]
    loader = CountingLoader(clean_runtime.services.repository.load_preferences)
    recipient_filter = RecipientFilter(clean_runtime.services.store.client, loader)

    def opted_out_users() -> set[int]:
        decision = recipient_filter.apply(
            new_id(), 0, CATEGORIES["news"], "suppress", everyone, NOW
        )
        return {r.user_id for r in decision.filtered if r.outcome is Outcome.OPTED_OUT}

    # First page: one query for both users (also the one without a row).
    assert opted_out_users() == {cached}
    assert loader.calls == [sorted([cached, no_row])]

    # PostgreSQL changes, nobody invalidates: the cached preferences still hold.
    set_preferences(clean_runtime, cached, opted_out=[])
    set_preferences(clean_runtime, no_row, opted_out=["news"])
    assert opted_out_users() == {cached}
    assert len(loader.calls) == 1

    # The API invalidates one user: only that user is read again.
    recipient_filter.invalidate_preferences(cached)
    assert opted_out_users() == set()
    assert loader.calls[1:] == [[cached]]

    # The API writes through: used at once, no query.
    recipient_filter.cache_preferences(no_row, Preferences(opted_out=frozenset({"news"})))
    calls = len(loader.calls)
    assert opted_out_users() == {no_row}
    assert len(loader.calls) <= calls + 1  # `cached` may be re-read right after invalidating


def test_a_write_back_never_overwrites_a_newer_write_through(clean_runtime: Any) -> None:
    phones = seed(clean_runtime, SeedUser("racer"))["racer"]
    user = phones[0].user_id
    recipient_filter = make_filter(clean_runtime)

    def stale_load(user_ids: Sequence[int]) -> Mapping[int, Preferences]:
        # The API's update lands while this page is reading PostgreSQL.
        recipient_filter.cache_preferences(user, Preferences(opted_out=frozenset({"news"})))
        return {u: Preferences() for u in user_ids}

    racing = RecipientFilter(clean_runtime.services.store.client, stale_load)
    racing.apply(new_id(), 0, CATEGORIES["news"], "suppress", phones, NOW)
    after = recipient_filter.apply(new_id(), 0, CATEGORIES["news"], "suppress", phones, NOW)

    assert set(outcomes(after).values()) == {Outcome.OPTED_OUT.value}


# -- failures and cost ------------------------------------------------------------------


def test_unreachable_redis_is_a_transient_store_error(tmp_path: Path) -> None:
    client = redis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), socket_timeout=1)
    recipient_filter = RecipientFilter(client, lambda ids: {u: Preferences() for u in ids})
    phone = Recipient(1, 1, "ios", False, "arn:phone", "en", "UTC")

    with pytest.raises(TransientStoreError):
        recipient_filter.apply(new_id(), 0, MARKETING, "suppress", [phone], NOW)
    with pytest.raises(TransientStoreError):
        recipient_filter.apply(new_id(), 0, CATEGORIES["security"], "suppress", [phone], NOW)
    with pytest.raises(TransientStoreError):
        recipient_filter.invalidate_preferences(1)


class RoundTrips:
    """Counts round trips at the socket: one write of one or more commands (a command,
    a pipeline, a cluster pipeline's batch for one node), the connection's handshake
    left out. Works the same for a standalone and a cluster client."""

    def __init__(self) -> None:
        self.count = 0

    def connection_class(self, url: str) -> type[redis.Connection]:
        base: Any = (
            redis.UnixDomainSocketConnection if url.startswith("unix:") else redis.Connection
        )
        trips = self

        class CountingConnection(base):  # type: ignore[misc, valid-type]
            handshaking = False

            def on_connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
                self.handshaking = True
                try:
                    return super().on_connect_check_health(*args, **kwargs)
                finally:
                    self.handshaking = False

            def send_packed_command(self, *args: Any, **kwargs: Any) -> Any:
                if not self.handshaking:
                    trips.count += 1
                return super().send_packed_command(*args, **kwargs)

        return CountingConnection


def test_a_page_of_500_recipients_costs_at_most_four_round_trips(clean_runtime: Any) -> None:
    repository = clean_runtime.services.repository
    zones = dict(
        repository.run(
            "INSERT INTO users (external_id, time_zone) SELECT 'bulk-' || g,"
            " (ARRAY['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Tokyo'])[g % 4 + 1]"
            " FROM generate_series(1, 250) g ORDER BY g RETURNING id, time_zone"
        )
    )
    ids = sorted(zones)
    for user_id in ids[::5]:
        set_preferences(clean_runtime, user_id, quiet=("22:00", "07:00"), caps={"social": 1})
    for user_id in ids[1::7]:
        set_preferences(clean_runtime, user_id, opted_out=["social"])
    page = [
        Recipient(2 * i + d, user_id, "ios", False, f"arn:{i}:{d}", "en", zones[user_id])
        for i, user_id in enumerate(ids)
        for d in range(2)
    ]
    assert len(page) == 500
    url = clean_runtime.servers.redis_url
    trips = RoundTrips()
    # The client the functions build (a cluster client on a cluster-mode server).
    client = connect(url, connection_class=trips.connection_class(url), health_check_interval=0)
    loader = CountingLoader(repository.load_preferences)
    recipient_filter = RecipientFilter(client, loader)
    # The worst case: Redis has never seen the script.
    client.script_flush()
    trips.count = 0

    cold = recipient_filter.apply(new_id(), 0, CATEGORIES["social"], "defer", page, NOW)
    cold_round_trips, trips.count = trips.count, 0
    warm = recipient_filter.apply(new_id(), 0, CATEGORIES["social"], "defer", page, NOW)
    warm_round_trips, trips.count = trips.count, 0
    recipient_filter.apply(new_id(), 0, CATEGORIES["security"], "defer", page, NOW)
    client.close()

    # One node (standalone, or a cluster with every slot on it): per-slot work is pipelined.
    assert cold_round_trips <= 4  # read prefs, write back, EVALSHA (NOSCRIPT), EVAL
    assert warm_round_trips <= 2  # read prefs, EVALSHA
    assert trips.count == 1  # security ignores preferences: the script alone
    assert len(loader.calls) == 1 and len(loader.calls[0]) == 250
    # Every recipient got exactly one decision; the page's rules were applied.
    for decision in (cold, warm):
        decided = len(decision.eligible) + len(decision.filtered) + len(decision.deferred)
        assert decided == 500
    assert {r.outcome for r in cold.filtered} == {Outcome.OPTED_OUT}
    assert {r.outcome for r in warm.filtered} >= {Outcome.OPTED_OUT, Outcome.CAPPED}
