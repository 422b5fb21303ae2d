"""Delivery rules: opt-outs, quiet hours and frequency caps of one user.

Pure functions of a user's preferences, the send's category and the instant
of the send. Quiet hours are wall-clock times in the recipient's own IANA
zone; a window may cross midnight (22:00-07:00). On a DST change day the
window opens and closes at the first instant the local clock reads its
bounds (a bound the clock skips is reached when the clock jumps past it), so
the end returned for a deferral is exactly when quiet hours stop.

What must be atomic across concurrent sends (caps counted, devices deduped)
is decided in Redis by `pushflow.adapters.recipient_filter`; this module says
what each user's limits are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from pushflow.domain.categories import Category

_DAY = timedelta(days=1)


# -- preferences ----------------------------------------------------------------


def _count(value: Any) -> int | None:
    """A cap override as stored in jsonb, as a count; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _clock(value: time) -> str:
    """A time of day, short: `22:00`, or `22:00:30` when it has seconds."""
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


@dataclass(frozen=True, slots=True)
class Preferences:
    """What one user chose (the `preferences` row); the defaults when there is none."""

    opted_out: frozenset[str] = frozenset()
    quiet_start: time | None = None
    quiet_end: time | None = None
    # This user's own daily cap per category: {"marketing": 2}.
    cap_overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Rows and cache entries come from outside: normalise once, here.
        object.__setattr__(self, "opted_out", frozenset(self.opted_out))
        overrides = {
            str(name): count
            for name, raw in dict(self.cap_overrides).items()
            if (count := _count(raw)) is not None
        }
        object.__setattr__(self, "cap_overrides", MappingProxyType(overrides))
        if self.quiet_start is None or self.quiet_end is None:
            object.__setattr__(self, "quiet_start", None)
            object.__setattr__(self, "quiet_end", None)

    @property
    def quiet_hours(self) -> tuple[time, time] | None:
        """(start, end) of the daily quiet window; None when the user has none."""
        if self.quiet_start is None or self.quiet_end is None or self.quiet_start == self.quiet_end:
            return None
        return self.quiet_start, self.quiet_end

    def to_dict(self) -> dict[str, Any]:
        """The compact form cached in Redis: `{"o": [...], "q": ["22:00", "07:00"], "c": {...}}`."""
        raw: dict[str, Any] = {}
        if self.opted_out:
            raw["o"] = sorted(self.opted_out)
        if self.quiet_start is not None and self.quiet_end is not None:
            raw["q"] = [_clock(self.quiet_start), _clock(self.quiet_end)]
        if self.cap_overrides:
            raw["c"] = dict(self.cap_overrides)
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Preferences:
        quiet = raw.get("q") or (None, None)
        return cls(
            opted_out=frozenset(raw.get("o") or ()),
            quiet_start=time.fromisoformat(quiet[0]) if quiet[0] else None,
            quiet_end=time.fromisoformat(quiet[1]) if quiet[1] else None,
            cap_overrides=raw.get("c") or {},
        )


DEFAULT_PREFERENCES = Preferences()


# -- quiet hours ----------------------------------------------------------------


@lru_cache(maxsize=1024)
def zone(name: str) -> tzinfo:
    """The IANA zone of a recipient; UTC when the name is not a zone we know."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # not found is a KeyError; "Europe" a directory
        return UTC


def _offset(timestamp: int, tz: tzinfo) -> timedelta | None:
    return datetime.fromtimestamp(timestamp, tz).utcoffset()


def _reaches(day: date, wall: time, tz: tzinfo) -> datetime:
    """The first instant (UTC) at which the clock in `tz` reads `wall` on `day`.

    A repeated time (clocks going back) is reached at its first occurrence; a
    skipped one (clocks going forward) when the clock jumps past it.
    """
    local = datetime.combine(day, wall, tzinfo=tz)  # fold=0: the first occurrence
    instant = local.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None):
        return instant
    # In a gap: read with the offset after the jump it falls before the jump,
    # with the offset before it after the jump. Find the jump to the second.
    low = int(min(instant, local.replace(fold=1).astimezone(UTC)).timestamp())
    high = int(max(instant, local.replace(fold=1).astimezone(UTC)).timestamp())
    after = _offset(high, tz)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(middle, tz) == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def quiet_until(start: time, end: time, now: datetime, tz: tzinfo) -> datetime | None:
    """When the quiet window `now` falls in ends (aware UTC), or None outside quiet hours.

    The window runs from `start` to `end` in the zone's wall-clock time and
    crosses midnight when `start` is later than `end`; `start == end` is no
    window at all.
    """
    if start == end:
        return None
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    today = now.astimezone(tz).date()
    crosses_midnight = start > end
    windows = []
    for days in (-1, 0, 1):
        day = today + timedelta(days=days)
        windows.append(
            (_reaches(day, start, tz), _reaches(day + _DAY if crosses_midnight else day, end, tz))
        )
    instant = now.astimezone(UTC)
    until: datetime | None = None
    for opens, closes in windows:
        if opens <= instant < closes or (until is not None and opens <= until < closes):
            # The second case: a near-24h window the DST shift made overlap the next one.
            until = closes
    return until


# -- caps and the rules of one user -----------------------------------------------


def is_opted_out(category: Category, preferences: Preferences) -> bool:
    return category.can_opt_out and category.name in preferences.opted_out


def daily_cap(category: Category, preferences: Preferences) -> int | None:
    """Pushes of this category the user may get per rolling 24 hours; None: uncapped.

    The user's own override for the category replaces the category's default;
    transactional categories are never capped.
    """
    if category.transactional:
        return None
    override = preferences.cap_overrides.get(category.name)
    return override if override is not None else category.daily_cap


@dataclass(frozen=True, slots=True)
class UserRules:
    """What one user's preferences mean for one send at one instant."""

    opted_out: bool
    # Set while the user is in quiet hours: when they end (aware UTC).
    quiet_until: datetime | None
    daily_cap: int | None


class SendRules:
    """The rules of one category at one instant, evaluated once per distinct user.

    Users who share a quiet window and a zone share its computation: a page
    of 500 recipients costs a handful of zone conversions, not 500.
    """

    def __init__(self, category: Category, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.category = category
        self.now = now
        self._quiet: dict[tuple[time, time, str], datetime | None] = {}

    def quiet_until(self, preferences: Preferences, time_zone: str) -> datetime | None:
        if self.category.transactional:
            return None
        window = preferences.quiet_hours
        if window is None:
            return None
        key = (*window, time_zone)
        if key not in self._quiet:
            self._quiet[key] = quiet_until(*window, self.now, zone(time_zone))
        return self._quiet[key]

    def for_user(self, preferences: Preferences, time_zone: str) -> UserRules:
        return UserRules(
            opted_out=is_opted_out(self.category, preferences),
            quiet_until=self.quiet_until(preferences, time_zone),
            daily_cap=daily_cap(self.category, preferences),
        )
