"""Local-day helpers: the scheduler's day runs from a daily boundary to the next.

The boundary is a local wall-clock time (e.g. 06:00 in Europe/Amsterdam), so a day is
23 h long on the spring-forward day and 25 h on the fall-back day. A boundary time that
does not exist on a day (02:30 on the spring-forward day) falls on the first valid instant
after the gap (03:00 local); one that exists twice (02:30 on the fall-back day) falls on
its first occurrence.

Every result is an aware datetime in UTC: Python subtracts two datetimes that share a
tzinfo by wall clock, which would make every day 24 h long.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_ONE_DAY = timedelta(days=1)


def boundary_on(day: date, tz: ZoneInfo, boundary: time) -> datetime:
    """The instant of the local wall time `boundary` on local date `day`, in UTC."""
    _require_naive(boundary)
    local = datetime.combine(day, boundary.replace(fold=0), tzinfo=tz)  # fold 0: first
    instant = local.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None):
        return instant
    return _end_of_gap(local)


def day_start(now: datetime, tz: ZoneInfo, boundary: time) -> datetime:
    """The most recent daily boundary at or before `now` (aware), in UTC."""
    _require_aware(now)
    day = now.astimezone(tz).date()
    start = boundary_on(day, tz, boundary)
    while start > now:
        day -= _ONE_DAY
        start = boundary_on(day, tz, boundary)
    return start


def next_boundary(now: datetime, tz: ZoneInfo, boundary: time) -> datetime:
    """The first daily boundary strictly after `now` (aware), in UTC."""
    _require_aware(now)
    day = now.astimezone(tz).date()
    end = boundary_on(day, tz, boundary)
    while end <= now:
        day += _ONE_DAY
        end = boundary_on(day, tz, boundary)
    return end


def day_bounds(now: datetime, tz: ZoneInfo, boundary: time) -> tuple[datetime, datetime]:
    """The day holding `now`: its start (<= now) and end (> now), in UTC."""
    return day_start(now, tz, boundary), next_boundary(now, tz, boundary)


def _end_of_gap(local: datetime) -> datetime:
    """The first valid instant after the gap that the wall time `local` falls in, UTC.

    For a wall time in a gap, fold=1 maps it with the offset after the transition (an
    instant before it) and fold=0 with the offset before (an instant after it); bisect
    between the two, to the second, for the first instant whose wall time is past `local`.
    """
    tz = local.tzinfo
    wall = local.replace(tzinfo=None)
    before = math.floor(local.replace(fold=1).timestamp())
    after = math.ceil(local.replace(fold=0).timestamp())
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) >= wall:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def _require_aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when.isoformat()}: an aware datetime is needed")


def _require_naive(boundary: time) -> None:
    if boundary.tzinfo is not None:
        raise ValueError("the boundary is a local wall time: pass a time without tzinfo")
