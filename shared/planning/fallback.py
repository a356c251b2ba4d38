"""The deadline of a needed socket without a plan on a forecast (pure: no I/O, no clock).

Without a usable forecast the scheduler (`services.scheduler.logic.fallback_plan`) and,
without a scheduler, the actuator (`services.actuator.core.fallback_targets`) switch on the
measured surplus, as the original did. That alone never fills a needed socket on a day
without sun, so both also switch a needed socket on from its *latest start*: the time it
takes to fill at full power, plus a margin, before the next boundary.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["latest_start"]


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
