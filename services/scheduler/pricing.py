"""The scheduler's money, pure: no I/O, no clock (every time is an argument).

* **Priced problem** (`priced_problem`): the published prices resampled onto the plan's steps
  (`shared.prices.price_steps`: a step the prices do not reach takes the price a day earlier)
  fill `import_price` / `export_price`, with `optional_grid_price_max`; `battery_modes` says
  whether the batteries can take the plan's modes (the P1 meter's token), and
  `initial_battery_mode` what they are in now.
* **The plan's modes** (`modes_of`): one per step, `zero` where it gives none or where the
  batteries cannot take modes (what the plan does under them is `shared.planning.simulate`'s).
* **The meter** (`Meter`, `meter_sample`): today's import and export from the P1 meter's
  counters, sample by sample, and their cost at the price in force over each stretch
  (a stretch across price steps is split in time; one no known price covers waits per
  quarter-hour and is priced once prices covering it come, e.g. when the prices service
  starts after the scheduler); the daily boundary starts a new day (a stretch across it is
  split too); a counter that goes back or jumps implausibly starts over from the new reading
  (counted by the caller through `MeterResult.reset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from shared.messages import Prices
from shared.planning.problem import BatteryMode, Plan, PlanningProblem
from shared.prices import StepPrices, price_steps

__all__ = [
    "MAX_METER_POWER_W",
    "Meter",
    "MeterResult",
    "meter_sample",
    "modes_of",
    "priced_problem",
    "prices_usable",
]

#: A meter reading implying more than this mean power is a jump, not energy, W.
MAX_METER_POWER_W = 100_000.0


def prices_usable(prices: Prices | None, now: datetime) -> str | None:
    """Why `prices` cannot be planned on at `now` (one short line), or None if they can."""
    if prices is None:
        return "no prices"
    if prices.end <= now:
        return f"prices ended at {prices.end.isoformat()}"
    if prices.start > now + timedelta(hours=1):
        return "prices start later"
    return None


def priced_problem(
    problem: PlanningProblem,
    prices: Prices | None,
    *,
    optional_grid_price_max: float | None,
    battery_modes: bool,
    initial_battery_mode: BatteryMode | None,
) -> tuple[PlanningProblem, StepPrices | None]:
    """The problem with prices per step (when `prices` are given) and the battery inputs."""
    data = problem.model_dump()
    data["battery_modes"] = battery_modes and bool(problem.batteries)
    data["initial_battery_mode"] = initial_battery_mode if data["battery_modes"] else None
    steps = None
    if prices is not None:
        steps = price_steps(prices, problem.start, problem.step_s, problem.n_steps)
        data["import_price"] = steps.import_eur_kwh
        data["export_price"] = steps.export_eur_kwh
        data["optional_grid_price_max"] = optional_grid_price_max
    return PlanningProblem.model_validate(data), steps


# --- what a plan does --------------------------------------------------------------------------


def modes_of(plan: Plan, n_steps: int, allowed: bool = True) -> list[BatteryMode]:
    """The plan's battery mode per step (`zero` where it gives none, or where not `allowed`)."""
    modes: list[BatteryMode] = list(plan.battery_mode or []) if allowed else []
    modes = modes[:n_steps]
    return modes + ["zero"] * (n_steps - len(modes))


# --- the meter ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Meter:
    """Today's grid energy and its cost, from the P1 meter's counters."""

    day_start: datetime
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    #: Import cost − export earnings of the energy counted while prices were known, EUR
    #: (None: no stretch of today had prices yet).
    cost_eur: float | None = None
    #: Energy counted while no prices covered it, per quarter-hour (its start, import kWh,
    #: export kWh): priced as soon as prices that cover it are known.
    pending: tuple[tuple[datetime, float, float], ...] = ()
    #: The last reading: its time and the counters (kWh).
    read_at: datetime | None = None
    meter_import_kwh: float | None = None
    meter_export_kwh: float | None = None

    @property
    def unpriced_kwh(self) -> float:
        """Energy counted today that no known price covers yet, kWh."""
        return sum(i + e for _, i, e in self.pending)


#: The slots energy waiting for a price is kept in, s (prices come per 15 min or hour).
PENDING_SLOT_S = 900
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _slot(when: datetime) -> datetime:
    seconds = (when - _EPOCH).total_seconds()
    return _EPOCH + timedelta(seconds=math.floor(seconds / PENDING_SLOT_S) * PENDING_SLOT_S)


def _spread(
    pending: tuple[tuple[datetime, float, float], ...],
    a: datetime,
    b: datetime,
    imp: float,
    exp: float,
) -> tuple[tuple[datetime, float, float], ...]:
    """`pending` with `imp`/`exp` spread evenly over `[a, b]` into quarter-hour slots."""
    slots = {start: (i, e) for start, i, e in pending}
    span = (b - a).total_seconds()
    t = a
    while True:
        start = _slot(t)
        end = min(b, start + timedelta(seconds=PENDING_SLOT_S))
        share = (end - t).total_seconds() / span if span > 0 else 1.0
        i, e = slots.get(start, (0.0, 0.0))
        slots[start] = (i + share * imp, e + share * exp)
        if end >= b:
            break
        t = end
    return tuple((start, i, e) for start, (i, e) in sorted(slots.items()))


def _price_pending(meter: Meter, prices: Prices | None) -> Meter:
    """`meter` with the waiting slots that `prices` cover priced (the price at the slot's
    middle)."""
    if prices is None or not meter.pending:
        return meter
    left: list[tuple[datetime, float, float]] = []
    cost = meter.cost_eur
    for start, imp, exp in meter.pending:
        mid = start + timedelta(seconds=PENDING_SLOT_S / 2)
        got = _cost(prices, mid, mid, imp, exp)
        if got is None:
            left.append((start, imp, exp))
        else:
            cost = (cost or 0.0) + got
    return replace(meter, cost_eur=cost, pending=tuple(left))


@dataclass(frozen=True, slots=True)
class MeterResult:
    meter: Meter
    #: Why the counting started over from this reading, if it did.
    reset: Literal["counter went back", "implausible jump"] | None = None


def _cost(prices: Prices | None, a: datetime, b: datetime, imp: float, exp: float) -> float | None:
    """Cost of `imp`/`exp` kWh spread evenly over `[a, b]` at the prices in force (None when
    the prices do not cover the whole stretch)."""
    if prices is None or a < prices.start or b > prices.end:
        return None
    span = (b - a).total_seconds()
    if span <= 0:
        k = math.floor((a - prices.start).total_seconds() / prices.step_s)
        k = min(k, len(prices.import_eur_kwh) - 1)
        return imp * prices.import_eur_kwh[k] - exp * prices.export_eur_kwh[k]
    total = 0.0
    t = a
    while t < b:
        k = math.floor((t - prices.start).total_seconds() / prices.step_s)
        k = min(k, len(prices.import_eur_kwh) - 1)
        step_end = prices.start + timedelta(seconds=(k + 1) * prices.step_s)
        piece_end = min(b, step_end) if step_end > t else b
        share = (piece_end - t).total_seconds() / span
        total += share * (imp * prices.import_eur_kwh[k] - exp * prices.export_eur_kwh[k])
        t = piece_end
    return total


def meter_sample(
    meter: Meter,
    at: datetime,
    import_total_kwh: float,
    export_total_kwh: float,
    prices: Prices | None,
    day_start: datetime,
) -> MeterResult:
    """`meter` after one more P1 reading at `at` (its counters), today starting at `day_start`.

    A reading not after the last one, or of an earlier day, changes nothing.
    """
    if (meter.read_at is not None and at <= meter.read_at) or day_start < meter.day_start:
        return MeterResult(meter)  # older than what is counted, or of a day gone
    if day_start > meter.day_start:
        fresh = Meter(day_start=day_start)
        if meter.read_at is None or meter.meter_import_kwh is None:
            return MeterResult(
                replace(
                    fresh,
                    read_at=at,
                    meter_import_kwh=import_total_kwh,
                    meter_export_kwh=export_total_kwh,
                )
            )
        # the stretch across the boundary: only its part after the boundary is today's
        span = (at - meter.read_at).total_seconds()
        share = (at - day_start).total_seconds() / span if span > 0 else 1.0
        base_imp = import_total_kwh - share * (import_total_kwh - meter.meter_import_kwh)
        base_exp = export_total_kwh - share * (export_total_kwh - (meter.meter_export_kwh or 0))
        meter = replace(
            fresh, read_at=day_start, meter_import_kwh=base_imp, meter_export_kwh=base_exp
        )
    if meter.read_at is None or meter.meter_import_kwh is None or meter.meter_export_kwh is None:
        return MeterResult(
            replace(
                meter,
                read_at=at,
                meter_import_kwh=import_total_kwh,
                meter_export_kwh=export_total_kwh,
            )
        )
    d_imp = import_total_kwh - meter.meter_import_kwh
    d_exp = export_total_kwh - meter.meter_export_kwh
    hours = (at - meter.read_at).total_seconds() / 3600
    restarted = replace(
        meter, read_at=at, meter_import_kwh=import_total_kwh, meter_export_kwh=export_total_kwh
    )
    if d_imp < -1e-9 or d_exp < -1e-9:
        return MeterResult(restarted, "counter went back")
    if hours > 0 and (d_imp + d_exp) * 1000 / hours > MAX_METER_POWER_W:
        return MeterResult(restarted, "implausible jump")
    d_imp, d_exp = max(0.0, d_imp), max(0.0, d_exp)
    cost = _cost(prices, meter.read_at, at, d_imp, d_exp)
    pending = meter.pending
    if cost is None:  # no price known for it yet: kept per quarter-hour until there is
        total = meter.cost_eur
        pending = _spread(pending, meter.read_at, at, d_imp, d_exp)
    else:
        total = (meter.cost_eur or 0.0) + cost
    counted = replace(
        restarted,
        import_kwh=meter.import_kwh + d_imp,
        export_kwh=meter.export_kwh + d_exp,
        cost_eur=total,
        pending=pending,
    )
    return MeterResult(_price_pending(counted, prices))
