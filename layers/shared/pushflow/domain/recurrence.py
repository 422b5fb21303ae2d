"""When timed sends fire: EventBridge Scheduler's cron, checked before it is used.

EventBridge Scheduler accepts (and moto stores) expressions it will never
fire as meant, so Pushflow validates them itself and computes the firings
the same way for the API ("next firing") and for local mode (which fires
schedules itself). EventBridge cron has six fields — minutes, hours,
day-of-month, month, day-of-week (1-7 = SUN-SAT), year — and exactly one of
day-of-month and day-of-week is `?`. The five time fields are evaluated with
croniter (after shifting day-of-week numbers to cron's 0-6) in the schedule's
IANA zone, so DST is handled by zoneinfo; the year field is a filter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from pushflow.domain.errors import InvalidRequest

_NAMES = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT"
_FIELD_FORMS = {
    "minutes": (re.compile(r"[0-9,\-*/]+"), 0, 59),
    "hours": (re.compile(r"[0-9,\-*/]+"), 0, 23),
    "day-of-month": (re.compile(r"[0-9,\-*/?LW]+"), 1, 31),
    "month": (re.compile(rf"([0-9,\-*/]|{_NAMES})+"), 1, 12),
    "day-of-week": (re.compile(rf"([0-9,\-*?L#]|{_NAMES})+"), 1, 7),
    "year": (re.compile(r"[0-9,\-*/]+"), 1970, 2199),
}
_MAX_YEAR = 2199


def _invalid(message: str, field: str = "cron") -> InvalidRequest:
    return InvalidRequest(message, field)


def _check_numbers(name: str, value: str, low: int, high: int) -> None:
    # Steps (after `/`) and nth-weekday counts (after `#`) are not values of the field.
    for part in value.split(","):
        for number in re.findall(r"\d+", part.split("/")[0].split("#")[0]):
            if not low <= int(number) <= high:
                raise _invalid(f"cron {name} {number} is out of range {low}-{high}")


def _shift_weekdays(value: str) -> str:
    """EventBridge numbers weekdays 1-7 from Sunday; cron numbers them 0-6.

    Only weekday numbers shift, not the `n` of `2#1` (the first Monday)."""

    def shift(part: str) -> str:
        day, sep, nth = part.partition("#")
        return re.sub(r"\d+", lambda m: str(int(m.group()) - 1), day) + sep + nth

    return ",".join(shift(part) for part in value.split(","))


def _years(value: str) -> frozenset[int] | None:
    if value == "*":
        return None
    years: set[int] = set()
    for part in value.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = 1970, _MAX_YEAR
        elif "-" in span:
            first, last = (int(x) for x in span.split("-", 1))
        else:
            first = int(span)
            last = _MAX_YEAR if step else first
        years.update(range(first, last + 1, int(step or 1)))
    return frozenset(years)


@dataclass(frozen=True, slots=True)
class Cron:
    """A validated EventBridge cron expression (the part inside `cron(...)`)."""

    expression: str
    croniter_expression: str
    years: frozenset[int] | None

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = expression.strip()
        if text.startswith("cron(") and text.endswith(")"):
            text = text[5:-1].strip()
        fields = text.split()
        if len(fields) != 6:
            raise _invalid(
                "cron must have 6 fields: minutes hours day-of-month month day-of-week year"
                f" (got {len(fields)})"
            )
        for (name, (form, low, high)), value in zip(_FIELD_FORMS.items(), fields, strict=True):
            if not form.fullmatch(value.upper()):
                raise _invalid(f"cron {name} {value!r} is not valid")
            _check_numbers(name, value, low, high)
        minute, hour, day, month, weekday, year = (f.upper() for f in fields)
        if (day == "?") == (weekday == "?"):
            raise _invalid("cron needs `?` in exactly one of day-of-month and day-of-week")
        standard = " ".join(
            [
                minute,
                hour,
                "*" if day == "?" else day,
                month,
                "*" if weekday == "?" else _shift_weekdays(weekday),
            ]
        )
        if not croniter.is_valid(standard):
            raise _invalid(f"cron {expression!r} is not valid")
        return cls(f"cron({' '.join(fields)})", standard, _years(year))

    def firings(self, after: datetime, time_zone: str) -> Iterator[datetime]:
        """Firing times (UTC) strictly after `after`, in the schedule's zone.

        As EventBridge Scheduler does across DST: a wall time the clocks skip
        does not fire that day, and one they repeat fires once.
        """
        zone = ZoneInfo(time_zone)
        moments = croniter(self.croniter_expression, after.astimezone(zone))
        previous_wall: datetime | None = None
        while True:
            try:
                moment: datetime = moments.get_next(datetime)
            except CroniterBadDateError:  # e.g. 31 FEB: no date ever matches
                return
            if moment.year > _MAX_YEAR or (
                self.years is not None and moment.year > max(self.years)
            ):
                return
            wall = moment.replace(tzinfo=None)
            if wall == previous_wall or not croniter.match(self.croniter_expression, wall):
                continue  # the repeated hour of a fall-back night; a skipped spring time
            previous_wall = wall
            if self.years is None or moment.year in self.years:
                yield moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Recurrence:
    cron: Cron
    time_zone: str
    start_at: datetime | None = None
    end_at: datetime | None = None

    def firings(self, after: datetime) -> Iterator[datetime]:
        begin = max(after, self.start_at - timedelta(microseconds=1)) if self.start_at else after
        for moment in self.cron.firings(begin, self.time_zone):
            if self.end_at is not None and moment > self.end_at:
                return
            yield moment

    def next_firing(self, after: datetime) -> datetime | None:
        return next(self.firings(after), None)


def check_recurrence(recurrence: Recurrence, now: datetime, minimum: timedelta) -> None:
    """Refuse what can never fire as meant: past end, end before start, too frequent."""
    if recurrence.end_at is not None and recurrence.end_at <= now:
        raise InvalidRequest("end_at is in the past", "end_at")
    if recurrence.start_at and recurrence.end_at and recurrence.end_at <= recurrence.start_at:
        raise InvalidRequest("end_at must be after start_at", "end_at")
    upcoming = list(islice(recurrence.firings(now), 60))
    if not upcoming:
        raise InvalidRequest("this schedule never fires between its start and end", "cron")
    gaps = [later - earlier for earlier, later in pairwise(upcoming)]
    if gaps and min(gaps) < minimum:
        raise InvalidRequest(
            f"the schedule fires every {int(min(gaps).total_seconds() // 60)} minutes;"
            f" the shortest allowed interval is {int(minimum.total_seconds() // 60)} minutes",
            "cron",
        )


def local_send_time(
    zone: str, at: time, now: datetime, if_passed: str, on: date | None = None
) -> datetime:
    """When `at` o'clock comes in `zone` (UTC): today (or on `on`), or tomorrow / now
    when it has passed there already. A wall time that DST skips is read with the
    offset before the change (02:30 on a spring-forward night fires at 03:30)."""
    tz = ZoneInfo(zone)
    local_now = now.astimezone(tz)
    day = on or local_now.date()
    moment = datetime.combine(day, at, tzinfo=tz)
    if moment <= local_now:
        if if_passed == "now":
            return now.astimezone(UTC)
        moment = datetime.combine(day + timedelta(days=1), at, tzinfo=tz)
    return moment.astimezone(UTC)
