"""The deadline of a needed socket without a plan on a forecast (pure: no I/O, no clock).

Without a usable forecast the scheduler (`services.scheduler.logic.fallback_plan`) and,
without a scheduler, the actuator (`services.actuator.core.fallback_targets`) switch on the
measured surplus, as the original did. That alone never fills a needed socket on a day
without sun, so both also switch a needed socket on from its *latest start*: the time it
takes to fill at full power, plus a margin, before the next boundary.

Once on, a needed socket stays due while its latest start is at most `HOLD_S` ahead
(`is_due`). A socket that draws more than its configured `max_power_usage` fills its books
faster than the latest start assumes, so the latest start moves later while it is on:
without the hold it went off a moment after every switch-on, stayed off the 5-min switch
interval, and fell further behind its deadline with each round (on 5 min, off 5 min).
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["HOLD_S", "is_due", "latest_start"]

#: A needed socket that is on stays due while its latest start is at most this far ahead, s
#: (a socket drawing 15 % over its configured power stays on 13 h: until it reads full).
HOLD_S = 2 * 3600.0


def latest_start(
    room_wh: float, power_w: float, boundary_at: datetime, margin_s: float
) -> datetime | None:
    """When a needed socket with `room_wh` left, drawing `power_w`, must be on to be full by
    `boundary_at` with `margin_s` to spare; None if it is full."""
    if room_wh <= 0:
        return None
    if power_w <= 0:
        raise ValueError(f"power must be > 0 W, got {power_w}")
    return boundary_at - timedelta(seconds=room_wh / power_w * 3600.0 + margin_s)


def is_due(
    room_wh: float,
    power_w: float,
    boundary_at: datetime,
    margin_s: float,
    now: datetime,
    *,
    on: bool,
) -> tuple[bool, datetime | None]:
    """Whether a needed socket must be on at `now` for its deadline, and its latest start.

    From its latest start on; a socket that is `on` already from `HOLD_S` before it.
    """
    start = latest_start(room_wh, power_w, boundary_at, margin_s)
    if start is None:
        return False, None
    hold = timedelta(seconds=HOLD_S if on else 0.0)
    return now >= start - hold, start
