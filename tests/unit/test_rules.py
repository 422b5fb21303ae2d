"""Delivery rules: quiet hours in the recipient's zone (midnight, DST), caps, opt-outs."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from pushflow.adapters.recipient_filter import cap_key, group_by_slot, preferences_key, seen_key
from pushflow.domain.categories import CATEGORIES
from pushflow.domain.rules import (
    DEFAULT_PREFERENCES,
    Preferences,
    SendRules,
    daily_cap,
    is_opted_out,
    quiet_until,
    zone,
)

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
NIGHT = (time(22), time(7))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- quiet hours ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local_now", "expected_end"),
    [
        (datetime(2026, 6, 15, 23, 0), datetime(2026, 6, 16, 7, 0)),  # evening: ends tomorrow
        (datetime(2026, 6, 16, 3, 0), datetime(2026, 6, 16, 7, 0)),  # after midnight: today
        (datetime(2026, 6, 15, 22, 0), datetime(2026, 6, 16, 7, 0)),  # the start is quiet
        (datetime(2026, 6, 16, 6, 59, 59), datetime(2026, 6, 16, 7, 0)),
        (datetime(2026, 6, 16, 7, 0), None),  # the end is not
        (datetime(2026, 6, 15, 21, 59, 59), None),
        (datetime(2026, 6, 15, 12, 0), None),
    ],
)
def test_a_window_crossing_midnight_ends_on_the_right_day(
    local_now: datetime, expected_end: datetime | None
) -> None:
    now = local_now.replace(tzinfo=TOKYO)
    end = quiet_until(*NIGHT, now, TOKYO)
    assert end == (expected_end.replace(tzinfo=TOKYO) if expected_end else None)
    if end is not None:
        assert end.tzinfo is UTC


def test_a_daytime_window_is_quiet_only_inside_it() -> None:
    start, end = time(13), time(15, 30)
    assert quiet_until(start, end, utc(2026, 6, 15, 11, 0), BERLIN) == utc(2026, 6, 15, 13, 30)
    assert quiet_until(start, end, utc(2026, 6, 15, 10, 59), BERLIN) is None
    assert quiet_until(start, end, utc(2026, 6, 15, 13, 30), BERLIN) is None


def test_the_same_start_and_end_is_no_window() -> None:
    assert quiet_until(time(8), time(8), utc(2026, 6, 15, 6), BERLIN) is None
    assert Preferences(quiet_start=time(8), quiet_end=time(8)).quiet_hours is None


def test_the_recipients_zone_decides() -> None:
    # 04:00 UTC: 06:00 in Berlin (quiet), midnight in New York (quiet), 13:00 in Tokyo.
    now = utc(2026, 6, 15, 4, 0)
    assert quiet_until(*NIGHT, now, BERLIN) == utc(2026, 6, 15, 5, 0)
    assert quiet_until(*NIGHT, now, NEW_YORK) == utc(2026, 6, 15, 11, 0)
    assert quiet_until(*NIGHT, now, TOKYO) is None


def test_berlin_spring_forward_the_night_is_an_hour_shorter() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    # 01:30 CET: the window ends at 07:00 CEST = 05:00 UTC, six elapsed hours later.
    assert quiet_until(*NIGHT, utc(2026, 3, 29, 0, 30), BERLIN) == utc(2026, 3, 29, 5, 0)


def test_berlin_spring_forward_a_skipped_bound_is_reached_when_the_clock_jumps() -> None:
    # 02:30 does not exist that night: a window ending then ends at the jump (01:00 UTC),
    # the first instant the clock reads past it; not an hour later.
    ends_in_gap = (time(22), time(2, 30))
    assert quiet_until(*ends_in_gap, utc(2026, 3, 29, 0, 30), BERLIN) == utc(2026, 3, 29, 1, 0)
    assert quiet_until(*ends_in_gap, utc(2026, 3, 29, 1, 0), BERLIN) is None
    # A window starting at 02:30 opens at the jump.
    starts_in_gap = (time(2, 30), time(6))
    assert quiet_until(*starts_in_gap, utc(2026, 3, 29, 0, 59, 59), BERLIN) is None
    assert quiet_until(*starts_in_gap, utc(2026, 3, 29, 1, 0), BERLIN) == utc(2026, 3, 29, 4, 0)


def test_new_york_fall_back_the_night_is_an_hour_longer() -> None:
    # 2026-11-01: 02:00 EDT goes back to 01:00 EST (06:00 UTC).
    # At midnight EDT (04:00 UTC) the window ends at 07:00 EST = 12:00 UTC.
    assert quiet_until(*NIGHT, utc(2026, 11, 1, 4, 0), NEW_YORK) == utc(2026, 11, 1, 12, 0)
    # During the repeated hour, both passes are inside the window.
    assert quiet_until(*NIGHT, utc(2026, 11, 1, 5, 30), NEW_YORK) == utc(2026, 11, 1, 12, 0)
    assert quiet_until(*NIGHT, utc(2026, 11, 1, 6, 30), NEW_YORK) == utc(2026, 11, 1, 12, 0)


def test_new_york_fall_back_a_repeated_end_is_its_first_occurrence() -> None:
    # A window ending at 01:30 ends at 01:30 EDT (05:30 UTC); when the clock reads
    # 01:15 again (EST, 06:15 UTC) the night's window is over, not reopened.
    ends_in_repeat = (time(22), time(1, 30))
    assert quiet_until(*ends_in_repeat, utc(2026, 11, 1, 5, 0), NEW_YORK) == utc(2026, 11, 1, 5, 30)
    assert quiet_until(*ends_in_repeat, utc(2026, 11, 1, 6, 15), NEW_YORK) is None


DST_DAYS = [utc(2026, 3, 29), utc(2026, 3, 8), utc(2026, 10, 25), utc(2026, 11, 1), utc(2026, 4, 5)]
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Tokyo", "UTC"]
quarter_hours = st.integers(0, 95).map(lambda q: time(q // 4, q % 4 * 15))


@settings(max_examples=300, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    start=quarter_hours,
    end=quarter_hours,
    day=st.sampled_from(DST_DAYS),
    seconds=st.integers(-86_400, 2 * 86_400),
)
def test_the_end_returned_is_exactly_when_quiet_hours_stop(
    zone_name: str, start: time, end: time, day: datetime, seconds: int
) -> None:
    """GIVEN any window and instant around DST changes, THEN the end is later, the window
    still holds a second before it, and it is over at it (a deferral sends at the end)."""
    tz = ZoneInfo(zone_name)
    now = day + timedelta(seconds=seconds)
    until = quiet_until(start, end, now, tz)
    if until is None:
        return
    assert until > now
    assert quiet_until(start, end, until - timedelta(seconds=1), tz) == until
    assert quiet_until(start, end, until, tz) is None


def test_an_unknown_zone_falls_back_to_utc() -> None:
    for name in ("Mars/Olympus_Mons", "", "Europe", "../etc/passwd"):
        assert zone(name) is UTC
    assert zone("Europe/Berlin") == BERLIN


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SendRules(CATEGORIES["news"], datetime(2026, 6, 15, 4))


# -- caps, opt-outs, transactional ---------------------------------------------------


def test_the_category_default_caps_without_an_override() -> None:
    assert daily_cap(CATEGORIES["marketing"], DEFAULT_PREFERENCES) == 2
    assert daily_cap(CATEGORIES["social"], DEFAULT_PREFERENCES) == 10


def test_a_users_override_replaces_the_category_default() -> None:
    preferences = Preferences(cap_overrides={"marketing": 1, "news": 5, "social": 0})
    assert daily_cap(CATEGORIES["marketing"], preferences) == 1
    assert daily_cap(CATEGORIES["news"], preferences) == 5
    assert daily_cap(CATEGORIES["social"], preferences) == 0
    assert daily_cap(CATEGORIES["reminders"], preferences) == 5  # no override: default


def test_transactional_categories_are_never_capped() -> None:
    preferences = Preferences(cap_overrides={"transactional": 1, "security": 0})
    assert daily_cap(CATEGORIES["transactional"], preferences) is None
    assert daily_cap(CATEGORIES["security"], preferences) is None


def test_unreadable_overrides_are_ignored() -> None:
    preferences = Preferences(cap_overrides={"a": "3", "b": -2, "c": True, "d": "x", "e": 2.0})
    assert dict(preferences.cap_overrides) == {"a": 3, "b": 0, "e": 2}


def test_opt_outs_apply_only_to_categories_users_may_leave() -> None:
    preferences = Preferences(opted_out=frozenset({"marketing", "security"}))
    assert is_opted_out(CATEGORIES["marketing"], preferences)
    assert not is_opted_out(CATEGORIES["news"], preferences)
    assert not is_opted_out(CATEGORIES["security"], preferences)


def test_transactional_sends_bypass_quiet_hours_and_caps() -> None:
    preferences = Preferences(
        opted_out=frozenset({"transactional"}),
        quiet_start=time(0),
        quiet_end=time(23, 59),
        cap_overrides={"transactional": 0},
    )
    now = utc(2026, 6, 15, 12)
    rules = SendRules(CATEGORIES["transactional"], now).for_user(preferences, "Europe/Berlin")
    assert (rules.opted_out, rules.quiet_until, rules.daily_cap) == (False, None, None)
    news = SendRules(CATEGORIES["news"], now).for_user(preferences, "Europe/Berlin")
    assert news.quiet_until == utc(2026, 6, 15, 21, 59)
    assert news.daily_cap == 3


# -- preferences as cached -------------------------------------------------------------


def test_preferences_round_trip_through_their_compact_form() -> None:
    preferences = Preferences(
        opted_out=frozenset({"news", "marketing"}),
        quiet_start=time(22),
        quiet_end=time(6, 30, 15),
        cap_overrides={"marketing": 1},
    )
    raw = preferences.to_dict()
    assert raw == {"o": ["marketing", "news"], "q": ["22:00", "06:30:15"], "c": {"marketing": 1}}
    assert Preferences.from_dict(raw) == preferences
    assert DEFAULT_PREFERENCES.to_dict() == {}
    assert Preferences.from_dict({}) == DEFAULT_PREFERENCES


def test_half_a_quiet_window_is_none() -> None:
    assert Preferences(quiet_start=time(22)).quiet_hours is None
    assert Preferences(quiet_start=time(22)).to_dict() == {}


# -- cluster mode: one script call per hash slot (the adapter's plan, no server) -----


def test_users_are_grouped_by_hash_slot_in_first_seen_order() -> None:
    def fake_keyslot(key: str) -> int:
        return int(key.split("{u:")[1].split("}")[0]) % 3

    assert group_by_slot([4, 3, 7, 1, 6, 5, 9], fake_keyslot) == [[4, 7, 1], [3, 6, 9], [5]]
    assert group_by_slot([], fake_keyslot) == []


def test_every_key_of_one_user_shares_its_hash_slot() -> None:
    for user_id in (1, 42, 9_000_000_001):
        slots = {
            key_slot(key.encode())
            for key in (
                preferences_key(user_id),
                cap_key(user_id, "marketing"),
                seen_key(user_id, "2b1f0c7e-0000-4000-8000-000000000000"),
            )
        }
        assert len(slots) == 1
    groups = group_by_slot(range(1, 2001), lambda key: key_slot(key.encode()))
    assert sorted(u for group in groups for u in group) == list(range(1, 2001))
    for group in groups:
        assert len({key_slot(cap_key(u, "news").encode()) for u in group}) == 1
