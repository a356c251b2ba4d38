"""Local days from one daily boundary to the next, across DST (Europe/Amsterdam, 2026)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.daytime import boundary_on, day_bounds, day_start, next_boundary

AMS = ZoneInfo("Europe/Amsterdam")
SPRING = date(2026, 3, 29)  # 02:00 CET -> 03:00 CEST
AUTUMN = date(2026, 10, 25)  # 03:00 CEST -> 02:00 CET


def local(day: date, hour: int, minute: int = 0, fold: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, fold=fold), tzinfo=AMS)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "boundary", "expected_utc"),
    [
        (date(2026, 6, 1), time(6), "2026-06-01T04:00"),  # CEST
        (date(2026, 1, 15), time(6), "2026-01-15T05:00"),  # CET
        (SPRING, time(0), "2026-03-28T23:00"),
        (SPRING, time(2), "2026-03-29T01:00"),  # does not exist: 03:00 CEST
        (SPRING, time(2, 30), "2026-03-29T01:00"),  # does not exist: 03:00 CEST
        (SPRING, time(3), "2026-03-29T01:00"),
        (SPRING, time(6), "2026-03-29T04:00"),
        (AUTUMN, time(2), "2026-10-25T00:00"),  # twice: the first (CEST)
        (AUTUMN, time(2, 30), "2026-10-25T00:30"),  # twice: the first (CEST)
        (AUTUMN, time(3), "2026-10-25T02:00"),
        (AUTUMN, time(6), "2026-10-25T05:00"),
    ],
)
def test_boundary_on(day: date, boundary: time, expected_utc: str) -> None:
    assert boundary_on(day, AMS, boundary) == utc(expected_utc)
    assert boundary_on(day, AMS, boundary.replace(fold=1)) == utc(expected_utc)


@pytest.mark.parametrize(
    ("day", "hours"),
    [(SPRING, 23), (AUTUMN, 25), (date(2026, 6, 1), 24), (date(2026, 3, 27), 24)],
)
def test_a_06_00_day_is_23_or_25_hours_over_a_dst_change(day: date, hours: int) -> None:
    # The day holding the change at 02:00/03:00 runs from 06:00 the day before.
    start, end = day_bounds(local(day, 4), AMS, time(6))
    assert start == local(day - timedelta(days=1), 6)
    assert end == local(day, 6)
    assert end - start == timedelta(hours=hours)
    # The day after is a normal one.
    assert next_boundary(end, AMS, time(6)) - end == timedelta(hours=24)


@pytest.mark.parametrize(
    ("day", "boundary", "hours"),
    [
        (SPRING, time(0), 23),
        (AUTUMN, time(0), 25),
        (SPRING, time(2, 30), 23.5),  # 03:00 CEST to 02:30 CEST next day
        (SPRING - timedelta(days=1), time(2, 30), 23.5),  # 02:30 CET to 03:00 CEST
        (AUTUMN, time(2, 30), 25),  # first 02:30 (CEST) to 02:30 CET
    ],
)
def test_day_lengths_for_other_boundaries(day: date, boundary: time, hours: float) -> None:
    start = boundary_on(day, AMS, boundary)
    assert day_start(start, AMS, boundary) == start
    assert next_boundary(start, AMS, boundary) - start == timedelta(hours=hours)


def test_now_exactly_at_the_boundary_starts_the_day() -> None:
    boundary = local(SPRING, 6)
    assert day_start(boundary, AMS, time(6)) == boundary
    assert next_boundary(boundary, AMS, time(6)) == local(SPRING + timedelta(days=1), 6)
    just_before = boundary - timedelta(microseconds=1)
    assert day_start(just_before, AMS, time(6)) == local(SPRING - timedelta(days=1), 6)
    assert next_boundary(just_before, AMS, time(6)) == boundary


def test_before_the_boundary_the_day_started_yesterday() -> None:
    now = local(AUTUMN, 5, 59)
    assert day_start(now, AMS, time(6)) == local(AUTUMN - timedelta(days=1), 6)
    assert next_boundary(now, AMS, time(6)) == local(AUTUMN, 6)


def test_inside_the_spring_gap() -> None:
    boundary = time(2, 30)
    gap_end = utc("2026-03-29T01:00")  # 03:00 CEST
    before = gap_end - timedelta(seconds=1)  # 01:59:59 CET
    assert day_start(before, AMS, boundary) == local(SPRING - timedelta(days=1), 2, 30)
    assert next_boundary(before, AMS, boundary) == gap_end
    assert day_start(gap_end, AMS, boundary) == gap_end


def test_the_second_occurrence_of_an_ambiguous_boundary_is_not_a_new_day() -> None:
    boundary = time(2, 30)
    first = local(AUTUMN, 2, 30, fold=0)
    second = local(AUTUMN, 2, 30, fold=1)
    assert second - first == timedelta(0)  # same tzinfo: Python compares wall clocks...
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)  # ...not so
    # (An ambiguous wall time never equals a time in another zone: compare in UTC.)
    assert day_start(second, AMS, boundary) == first.astimezone(UTC)
    assert day_start(first, AMS, boundary) == first.astimezone(UTC)
    assert next_boundary(first, AMS, boundary) == local(AUTUMN + timedelta(days=1), 2, 30)


def test_results_are_utc_and_any_timezone_of_now_gives_the_same_day() -> None:
    now = local(AUTUMN, 12)
    start = day_start(now, AMS, time(6))
    assert start.tzinfo is UTC
    assert day_start(now.astimezone(UTC), AMS, time(6)) == start
    assert day_start(now.astimezone(ZoneInfo("Asia/Tokyo")), AMS, time(6)) == start


def test_naive_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        day_start(datetime(2026, 1, 1), AMS, time(6))
    with pytest.raises(ValueError, match="naive"):
        next_boundary(datetime(2026, 1, 1), AMS, time(6))
    with pytest.raises(ValueError, match="tzinfo"):
        day_start(local(SPRING, 12), AMS, time(6, tzinfo=UTC))


@given(
    st.datetimes(
        min_value=datetime(2025, 1, 1),
        max_value=datetime(2028, 1, 1),
        timezones=st.just(UTC),
    ),
    st.times(),
)
def test_day_start_and_next_boundary_bracket_now(now: datetime, boundary: time) -> None:
    start, end = day_bounds(now, AMS, boundary)
    assert start <= now < end
    assert timedelta(hours=23) <= end - start <= timedelta(hours=25)
    assert day_start(end, AMS, boundary) == end
    assert next_boundary(start, AMS, boundary) == end
