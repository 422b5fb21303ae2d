"""When timed sends fire: EventBridge cron, read in an IANA zone, bounded, checked.

Expected firings are written out by hand (weekday names, local wall times,
UTC instants) from the EventBridge Scheduler documentation: six fields,
day-of-week 1-7 = SUN-SAT, `?` in exactly one day field, the schedule's zone
with DST (a skipped wall time does not fire, a repeated one fires once).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from pushflow.domain.errors import InvalidRequest
from pushflow.domain.recurrence import Cron, Recurrence, check_recurrence, local_send_time

pytestmark = pytest.mark.unit

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
TOKYO = "Asia/Tokyo"
HOUR = timedelta(hours=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def firings(expression: str, after: datetime, zone: str = "UTC", count: int = 10) -> list[datetime]:
    return list(islice(Cron.parse(expression).firings(after, zone), count))


def wall(moments: list[datetime], zone: str = "UTC", form: str = "%a %Y-%m-%d %H:%M") -> list[str]:
    """What a clock in `zone` reads at each firing."""
    return [moment.astimezone(ZoneInfo(zone)).strftime(form) for moment in moments]


# -- parsing EventBridge cron ---------------------------------------------------------


def test_weekday_numbers_count_from_sunday_so_2_to_6_is_monday_to_friday() -> None:
    # GIVEN Friday 2026-11-20, 00:00 UTC
    after = utc(2026, 11, 20)

    moments = firings("0 9 ? * 2-6 *", after, count=7)

    assert wall(moments) == [
        "Fri 2026-11-20 09:00",
        "Mon 2026-11-23 09:00",
        "Tue 2026-11-24 09:00",
        "Wed 2026-11-25 09:00",
        "Thu 2026-11-26 09:00",
        "Fri 2026-11-27 09:00",
        "Mon 2026-11-30 09:00",
    ]
    assert all(moment.tzinfo is UTC for moment in moments)


@pytest.mark.parametrize(
    ("day_of_week", "weekdays"),
    [
        ("1", {"Sun"}),
        ("7", {"Sat"}),
        ("1,7", {"Sat", "Sun"}),
        ("SUN", {"Sun"}),
        ("MON-FRI", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("2-6", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
    ],
)
def test_day_of_week_numbers_and_names_pick_the_same_days(
    day_of_week: str, weekdays: set[str]
) -> None:
    moments = firings(f"0 9 ? * {day_of_week} *", utc(2026, 11, 1), count=14)

    assert {moment.strftime("%a") for moment in moments} == weekdays
    assert len(moments) == 14


def test_month_names_lists_and_day_of_month_pick_those_dates() -> None:
    moments = firings("30 7 1,15 JAN,JUL ? *", utc(2026, 11, 24), count=5)

    assert wall(moments, form="%Y-%m-%d %H:%M") == [
        "2027-01-01 07:30",
        "2027-01-15 07:30",
        "2027-07-01 07:30",
        "2027-07-15 07:30",
        "2028-01-01 07:30",
    ]


def test_ranges_and_steps_in_minutes_and_hours() -> None:
    moments = firings("0/20 8-17/3 * * ? *", utc(2026, 11, 24), count=13)

    assert wall(moments, form="%d %H:%M") == [
        "24 08:00",
        "24 08:20",
        "24 08:40",
        "24 11:00",
        "24 11:20",
        "24 11:40",
        "24 14:00",
        "24 14:20",
        "24 14:40",
        "24 17:00",
        "24 17:20",
        "24 17:40",
        "25 08:00",
    ]


def test_the_last_day_of_the_month_and_the_nearest_weekday() -> None:
    last = firings("0 9 L * ? *", utc(2026, 11, 24), count=3)
    nearest_weekday = firings("0 9 15W * ? *", utc(2026, 11, 1), count=2)

    assert wall(last) == ["Mon 2026-11-30 09:00", "Thu 2026-12-31 09:00", "Sun 2027-01-31 09:00"]
    # 2026-11-15 is a Sunday: the nearest weekday is Monday the 16th.
    assert wall(nearest_weekday) == ["Mon 2026-11-16 09:00", "Tue 2026-12-15 09:00"]


def test_the_nth_weekday_of_the_month_as_in_the_eventbridge_documentation() -> None:
    # `0 9 ? * 2#1 *` is the documentation's "first Monday of each month".
    first_monday = firings("0 9 ? * 2#1 *", utc(2026, 11, 24), count=3)
    third_friday = firings("0 9 ? * 6#3 *", utc(2026, 11, 1), count=2)

    assert wall(first_monday) == [
        "Mon 2026-12-07 09:00",
        "Mon 2027-01-04 09:00",
        "Mon 2027-02-01 09:00",
    ]
    assert wall(third_friday) == ["Fri 2026-11-20 09:00", "Fri 2026-12-18 09:00"]


def test_the_cron_wrapper_is_accepted_and_kept() -> None:
    wrapped = Cron.parse("cron(0 9 ? * MON-FRI *)")
    bare = Cron.parse("0 9 ? * MON-FRI *")

    assert wrapped.expression == bare.expression == "cron(0 9 ? * MON-FRI *)"
    after = utc(2026, 11, 20)
    assert list(islice(wrapped.firings(after, "UTC"), 5)) == firings(
        bare.expression, after, count=5
    )


@pytest.mark.parametrize(
    ("expression", "explains"),
    [
        ("0 9 ? * MON-FRI", "6 fields"),  # the 5 fields of Unix cron
        ("0 9 ? * MON-FRI * 2027", "6 fields"),
        ("0 9 ? * ? *", "`?`"),
        ("0 9 * * * *", "`?`"),
        ("0 9 1 * MON *", "`?`"),
        ("0 25 * * ? *", "hours 25"),
        ("60 9 * * ? *", "minutes 60"),
        ("0 9 32 * ? *", "day-of-month 32"),
        ("0 9 * 13 ? *", "month 13"),
        ("0 9 ? * 0 *", "day-of-week 0"),
        ("0 9 ? * 8 *", "day-of-week 8"),
        ("0 9 * * ? 1969", "year 1969"),
        ("0 9 ? * FUNDAY *", "day-of-week"),
        ("nine o'clock daily", "6 fields"),
    ],
)
def test_a_malformed_cron_is_refused_saying_what_is_wrong(expression: str, explains: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        Cron.parse(expression)

    assert refused.value.field == "cron"
    assert explains in refused.value.message


# -- the year field ---------------------------------------------------------------------


def test_the_year_field_filters_firings() -> None:
    only_2028 = firings("0 9 1 JAN ? 2028", utc(2026, 11, 24), count=5)
    listed = firings("0 9 31 DEC ? 2026,2028", utc(2026, 11, 24), count=5)
    spanned = firings("0 9 1 JAN ? 2027-2028", utc(2026, 11, 24), count=5)

    assert wall(only_2028, form="%Y-%m-%d") == ["2028-01-01"]
    assert wall(listed, form="%Y-%m-%d") == ["2026-12-31", "2028-12-31"]
    assert wall(spanned, form="%Y-%m-%d") == ["2027-01-01", "2028-01-01"]


def test_years_all_in_the_past_never_fire() -> None:
    assert firings("0 9 * * ? 2020", utc(2026, 11, 24)) == []


def test_a_year_step_fires_every_other_year() -> None:
    # EventBridge allows `/` in the year field: every second year from 2027.
    moments = firings("0 9 1 JAN ? 2027/2", utc(2026, 11, 24), count=3)

    assert wall(moments, form="%Y-%m-%d") == ["2027-01-01", "2029-01-01", "2031-01-01"]


# -- time zones and DST -------------------------------------------------------------------


def test_daily_9am_in_berlin_stays_9am_local_across_the_spring_change() -> None:
    # GIVEN Berlin's clocks going from 02:00 CET to 03:00 CEST on 2027-03-28
    moments = firings("0 9 * * ? *", utc(2027, 3, 26), BERLIN, count=4)

    assert wall(moments, BERLIN, "%d %H:%M %Z") == [
        "26 09:00 CET",
        "27 09:00 CET",
        "28 09:00 CEST",
        "29 09:00 CEST",
    ]
    assert moments == [
        utc(2027, 3, 26, 8),
        utc(2027, 3, 27, 8),
        utc(2027, 3, 28, 7),
        utc(2027, 3, 29, 7),
    ]


def test_daily_9am_in_new_york_stays_9am_local_across_the_fall_change() -> None:
    # GIVEN New York's clocks going from 02:00 EDT back to 01:00 EST on 2026-11-01
    moments = firings("0 9 * * ? *", utc(2026, 10, 30), NEW_YORK, count=4)

    assert wall(moments, NEW_YORK, "%d %H:%M %Z") == [
        "30 09:00 EDT",
        "31 09:00 EDT",
        "01 09:00 EST",
        "02 09:00 EST",
    ]
    assert moments == [
        utc(2026, 10, 30, 13),
        utc(2026, 10, 31, 13),
        utc(2026, 11, 1, 14),
        utc(2026, 11, 2, 14),
    ]


def test_a_wall_time_that_happens_twice_in_the_fall_fires_once() -> None:
    # EventBridge Scheduler: "When the time shifts back in the Fall, your schedule runs
    # only once". 01:30 happens at 05:30 UTC (EDT) and again at 06:30 UTC (EST).
    moments = firings("30 1 * * ? *", utc(2026, 10, 31), NEW_YORK, count=3)

    assert moments == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_a_wall_time_skipped_in_the_spring_does_not_fire_that_day() -> None:
    # EventBridge Scheduler: "your schedule invocation gets skipped if the cron expression
    # falls on a non-existent date and time". Berlin has no 02:30 on 2027-03-28.
    moments = firings("30 2 * * ? *", utc(2027, 3, 27), BERLIN, count=2)

    assert wall(moments, BERLIN, "%d %H:%M %Z") == ["27 02:30 CET", "29 02:30 CEST"]


# -- start and end ----------------------------------------------------------------------


def daily_at_9_utc(start_at: datetime | None, end_at: datetime | None) -> Recurrence:
    return Recurrence(Cron.parse("0 9 * * ? *"), "UTC", start_at, end_at)


def test_firings_start_at_the_start_and_stop_at_the_end() -> None:
    recurrence = daily_at_9_utc(utc(2026, 12, 1, 9), utc(2026, 12, 3, 12))

    assert list(recurrence.firings(utc(2026, 11, 24))) == [
        utc(2026, 12, 1, 9),  # a firing at the start instant is included
        utc(2026, 12, 2, 9),
        utc(2026, 12, 3, 9),
    ]
    assert recurrence.next_firing(utc(2026, 12, 2, 9)) == utc(2026, 12, 3, 9)
    assert recurrence.next_firing(utc(2026, 12, 3, 9)) is None


def test_a_start_between_firings_waits_for_the_next_one() -> None:
    recurrence = daily_at_9_utc(utc(2026, 12, 1, 9, 1), None)

    assert recurrence.next_firing(utc(2026, 11, 24)) == utc(2026, 12, 2, 9)
    # Once past the start, the start no longer matters.
    assert recurrence.next_firing(utc(2026, 12, 5, 10)) == utc(2026, 12, 6, 9)


# -- refusals before anything is created -----------------------------------------------------

NOW = utc(2026, 11, 24, 10)
MINIMUM = timedelta(minutes=60)


def refusal(recurrence: Recurrence, minimum: timedelta = MINIMUM) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        check_recurrence(recurrence, NOW, minimum)
    return refused.value


def test_an_end_before_the_start_is_refused() -> None:
    error = refusal(daily_at_9_utc(NOW + timedelta(days=10), NOW + timedelta(days=5)))

    assert error.field == "end_at"
    assert error.message == "end_at must be after start_at"


def test_an_end_in_the_past_is_refused() -> None:
    error = refusal(daily_at_9_utc(None, NOW - HOUR))

    assert error.field == "end_at"
    assert "in the past" in error.message


def test_a_recurrence_more_frequent_than_the_minimum_is_refused_naming_both_intervals() -> None:
    error = refusal(Recurrence(Cron.parse("*/5 * * * ? *"), "UTC"))

    assert error.field == "cron"
    assert "every 5 minutes" in error.message
    assert "60 minutes" in error.message


def test_the_shortest_gap_counts_not_the_average() -> None:
    # 09:00 and 10:00 each day: an hour apart, then 23 hours.
    error = refusal(Recurrence(Cron.parse("0 9,10 * * ? *"), "UTC"), timedelta(minutes=120))

    assert error.field == "cron"
    assert "every 60 minutes" in error.message
    assert "120 minutes" in error.message


@pytest.mark.parametrize(
    "recurrence",
    [
        Recurrence(Cron.parse("0 * * * ? *"), "UTC"),  # exactly the minimum
        Recurrence(Cron.parse("0 9 * * ? *"), BERLIN, NOW, NOW + timedelta(days=30)),
        Recurrence(Cron.parse("0 9 ? * MON-FRI *"), NEW_YORK),
    ],
)
def test_a_recurrence_at_or_above_the_minimum_is_accepted(recurrence: Recurrence) -> None:
    check_recurrence(recurrence, NOW, MINIMUM)  # raises nothing


def test_a_recurrence_that_never_fires_before_its_end_is_refused() -> None:
    # Today's 09:00 UTC has passed and the end comes before tomorrow's.
    error = refusal(daily_at_9_utc(None, NOW + HOUR))

    assert error.field == "cron"
    assert "never fires" in error.message


def test_a_recurrence_whose_years_are_past_is_refused() -> None:
    error = refusal(Recurrence(Cron.parse("0 9 * * ? 2020"), "UTC"))

    assert error.field == "cron"
    assert "never fires" in error.message


def test_a_date_that_does_not_exist_is_refused() -> None:
    # 31 February: the expression is well formed, but it never fires.
    error = refusal(Recurrence(Cron.parse("0 9 31 FEB ? *"), "UTC"))

    assert error.field == "cron"
    assert "never fires" in error.message


# -- a local time in each zone -----------------------------------------------------------------

NINE = time(9)


def test_a_local_time_still_ahead_goes_today() -> None:
    # 06:00 UTC is 07:00 in Berlin.
    assert local_send_time(BERLIN, NINE, utc(2026, 11, 24, 6), "tomorrow") == utc(2026, 11, 24, 8)


def test_today_is_the_date_in_the_recipients_zone() -> None:
    # 20:00 UTC on the 24th is 05:00 on the 25th in Tokyo: 09:00 there is 00:00 UTC.
    assert local_send_time(TOKYO, NINE, utc(2026, 11, 24, 20), "tomorrow") == utc(2026, 11, 25)


def test_a_local_time_passed_today_goes_tomorrow_or_now_as_asked() -> None:
    # 10:00 UTC is 11:00 in Berlin.
    now = utc(2026, 11, 24, 10)

    tomorrow = local_send_time(BERLIN, NINE, now, "tomorrow")
    immediately = local_send_time(BERLIN, NINE, now, "now")

    assert tomorrow == utc(2026, 11, 25, 8)
    assert immediately == now
    assert immediately.tzinfo is UTC and tomorrow.tzinfo is UTC


def test_tomorrow_keeps_the_wall_time_across_a_dst_change() -> None:
    # 11:00 CET on Saturday; on Sunday Berlin is on CEST.
    when = local_send_time(BERLIN, NINE, utc(2027, 3, 27, 10), "tomorrow")

    assert when == utc(2027, 3, 28, 7)
    assert when.astimezone(ZoneInfo(BERLIN)).strftime("%H:%M %Z") == "09:00 CEST"


def test_a_given_date_uses_that_days_offset() -> None:
    now = utc(2027, 3, 1)

    assert local_send_time(BERLIN, NINE, now, "tomorrow", date(2027, 3, 27)) == utc(2027, 3, 27, 8)
    assert local_send_time(BERLIN, NINE, now, "tomorrow", date(2027, 3, 28)) == utc(2027, 3, 28, 7)


def test_a_wall_time_skipped_by_dst_goes_an_hour_later_on_the_new_clock() -> None:
    # Berlin has no 02:30 on 2027-03-28: read with CET, it is 01:30 UTC, 03:30 CEST.
    when = local_send_time(BERLIN, time(2, 30), utc(2027, 3, 1), "tomorrow", date(2027, 3, 28))

    assert when == utc(2027, 3, 28, 1, 30)
    assert when.astimezone(ZoneInfo(BERLIN)).strftime("%H:%M %Z") == "03:30 CEST"


def test_a_wall_time_that_happens_twice_goes_at_the_first() -> None:
    when = local_send_time(NEW_YORK, time(1, 30), utc(2026, 10, 1), "tomorrow", date(2026, 11, 1))

    assert when == utc(2026, 11, 1, 5, 30)
